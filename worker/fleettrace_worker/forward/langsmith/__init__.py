"""The ``langsmith`` group: records as LangSmith runs."""
