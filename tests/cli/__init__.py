"""Tests of ppl_vae/cli/."""
