"""Benchmark harness: stock Dramatiq's RedisBroker and Triage, measured in the same run."""
