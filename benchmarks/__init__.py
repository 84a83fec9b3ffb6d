"""Benchmarks of `monitor` against rss2email: `make bench` writes results.md and results.json."""
