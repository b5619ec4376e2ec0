"""Tests of ppl_vae/diagnostics/."""
