"""What one demo run is (its servers, namespace, fleet and run id), and what each of
its agent processes reports back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Final

#: How long the demo waits for the last records to become rows.
DRAIN_TIMEOUT_S: Final = 60.0


def new_run_id() -> str:
    """A run id that is also a valid namespace: a run gets a namespace of its own
    unless one is given."""
    return f"demo-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """One demo run."""

    redis_url: str
    database_url: str
    namespace: str
    agents: int = 4
    plans: int = 10
    #: Run plans for this long instead of ``plans`` per agent.
    seconds: float | None = None
    run_worker: bool = True
    #: Records a misbehaving producer writes past the emitter (half of them invalid), to
    #: show the dead-letter path.
    malformed: int = 2
    run_id: str = field(default_factory=new_run_id)
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    #: After each plan an agent waits a while drawn from this range (None: it does not):
    #: the slow trickle that keeps the dashboard moving once the proof is done.
    pause_s: tuple[float, float] | None = None
    #: The number of the first agent (plan ids name it): the trickle's agents follow
    #: those of the run, so no plan id is used twice.
    first_agent: int = 0


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What one agent process's emitter did (sent: records now in Redis)."""

    agent: int
    plans: int
    sent: int
    dropped: int
