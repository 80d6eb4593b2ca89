"""The load harness: the whole pipeline driven on this machine's Redis and PostgreSQL.

``python -m benchmarks.load`` measures the agent's hot path, producer and worker
throughput, end-to-end freshness, backlog drain and memory, for fleettrace and for a
straightforward baseline pipeline in the same run, and prints every figure next to
its target (see docs/performance.md). One module per measurement; nothing here is
imported by fleettrace itself.
"""
