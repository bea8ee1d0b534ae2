"""The embedded default: a small Flux-architecture DiT trained on scikit-learn's bundled digits.

Everything here runs on 2 CPU cores in minutes and needs no download, so every stage of the
repository produces real numbers on a laptop or in CI.
"""
