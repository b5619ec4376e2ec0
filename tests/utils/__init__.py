"""Tests of ppl_vae/utils/."""
