"""Learned FCGF descriptors: sparse convolution engine, network, losses, training data, training, evaluation."""
