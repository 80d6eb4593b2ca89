"""The public surface of the ``fleettrace`` package is exactly the names meant for agent
code; anything else is reached through its module and may change."""

from __future__ import annotations

import fleettrace
import fleettrace_worker

INTENDED = {
    # Records and their metrics.
    "LLMTrace",
    # The plan tree's own records, and the token a child plan elsewhere takes.
    "ToolCall",
    "PlanRecord",
    "current_plan_token",
    "MetricSample",
    "MetricKey",
    "MetricSpec",
    "MetricType",
    # Sending them.
    "Emitter",
    "EmitterSettings",
    "EmitterStats",
    "configure",
    "get_emitter",
    "Keys",
    # The hooks, as a module and one by one.
    "hooks",
    "actor",
    "context_build",
    "decision",
    "index_query",
    "llm_call",
    "phase",
    "plan",
    "record_llm_call",
    "sandbox",
    "set_hot_context_tokens",
    "tool",
    # Pricing a record now rather than on the sender thread.
    "Pricer",
    "price_trace",
    # Reading the live counters back.
    "LiveSeries",
    "read_live",
    "is_over_budget",
    "plan_cost_usd",
    # Errors.
    "FleettraceError",
    "ConfigurationError",
    "EmitterClosed",
    "EntryDecodeError",
    "PermanentError",
    "TransientError",
    "__version__",
}


def test_all_is_exactly_the_intended_names() -> None:
    assert len(fleettrace.__all__) == len(set(fleettrace.__all__))
    assert set(fleettrace.__all__) == INTENDED


def test_every_exported_name_exists_and_star_import_gives_exactly_them() -> None:
    for name in fleettrace.__all__:
        assert getattr(fleettrace, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from fleettrace import *", namespace)
    assert set(namespace) - {"__builtins__"} == INTENDED


def test_no_public_module_attribute_is_left_out_of_all() -> None:
    """A name imported into the package for agent code but missing from __all__ would be
    public by accident; submodules are reached as modules."""
    public = {
        name
        for name, value in vars(fleettrace).items()
        if not name.startswith("_") and type(value).__name__ != "module"
    }
    assert public <= INTENDED


def test_the_worker_package_has_no_python_api() -> None:
    """Its surface is the ``fleettrace`` command; nothing is exported for import."""
    assert not hasattr(fleettrace_worker, "__all__")
