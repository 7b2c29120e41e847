"""Benchmarks for Liveshop, apart from the tests. Run `python -m bench.fanout --help`."""
