"""Performance benchmarks for ppl_vae, run on demand by ``make bench`` (never in tests)."""
