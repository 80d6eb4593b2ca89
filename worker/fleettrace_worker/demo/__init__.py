"""The demo: a simulated fleet of agent processes, a worker, and the proof that nothing
was lost (``fleettrace demo``; docs/deployment.md).

- :mod:`.settings`: what one run is (servers, namespace, fleet size, run id);
- :mod:`.llm_server`: the local OpenAI-compatible server the agents call;
- :mod:`.agents`: one agent process, recording through ``wrap_openai`` and the hooks,
  and the misbehaving producer that writes past the emitter;
- :mod:`.accounting`: the figures of a run and the proof, records sent = rows stored
  + dead letters;
- :mod:`.run`: the orchestration (server, worker, agent processes, drain).

This module imports none of them: an agent process, started with ``spawn``, loads
only what it runs (``agents``), not the worker and PostgreSQL side.
"""
