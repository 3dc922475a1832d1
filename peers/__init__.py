"""Peers: DPMD and SDAC (Ma et al., arXiv 2502.00361) on this project's harness, for comparisons."""
