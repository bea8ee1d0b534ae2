"""ditguide: training-free strong/weak self-guidance for Diffusion Transformers."""

__version__ = "0.1.0"
