"""Serving what the worker knows: health, /metrics, the dashboard, and the sums readers read."""
