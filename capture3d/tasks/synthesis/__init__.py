"""Deterministic synthetic captures with ground truth: photos, scans and bodies."""
