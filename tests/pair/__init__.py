"""Tests of ppl_vae/pair/."""
