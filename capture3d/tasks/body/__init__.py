"""Parametric body models and SMPLify-style fitting to 2D keypoints (see each module)."""
