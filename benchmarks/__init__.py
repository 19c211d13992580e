"""Benchmarks of cur_ray against DuckDB and plain pyarrow (see benchmarks/README.md)."""
