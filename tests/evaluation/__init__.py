"""Tests of ppl_vae/evaluation/."""
