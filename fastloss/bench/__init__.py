"""Benchmark machinery shared by `fastloss bench` and benchmarks/."""
