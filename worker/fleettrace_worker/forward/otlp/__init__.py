"""The ``otlp`` group: records as OpenTelemetry spans and metrics over OTLP/HTTP."""
