"""Tests of ppl_vae/comparison/."""
