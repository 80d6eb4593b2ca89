"""The fleettrace worker sidecar: stream to PostgreSQL and LangSmith, and the CLI."""
