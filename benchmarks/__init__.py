"""Benchmarks of numpyro_cds (not part of the library; see README.md here)."""
