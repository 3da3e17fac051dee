"""Evaluation: EDC/pAUC, comparison sets, bootstrap, fusion (numpy only; no torch, no files)."""
