"""Gaussian baselines: the same training scripts as diffppo.py, diffsac.py and diffwpo.py with a tanh-Gaussian policy."""
