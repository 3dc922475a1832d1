"""Gaussian baselines: the training scripts of the diffusion policies with a tanh-Gaussian policy."""
