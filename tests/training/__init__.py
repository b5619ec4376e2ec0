"""Tests of ppl_vae/training/."""
