"""Benchmarks: ASV stages (llm_trace_bench) and the load harness."""
