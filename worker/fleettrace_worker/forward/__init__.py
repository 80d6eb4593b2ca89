"""Forwarding records to other systems: the shared delivery machinery, LangSmith, OTLP."""
