"""Benchmarks (speed, memory, FLOPs) of prompt tuning and model tuning; never imported by the package itself."""
