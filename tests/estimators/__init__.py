"""Tests of ppl_vae/estimators/."""
