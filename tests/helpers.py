"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""

import torch

from ditguide.families.tiny import tiny_transformer

_MODELS: dict = {}


def model_of(family: str, dtype=torch.float32):
    """One tiny random-weight transformer per (family, dtype), built once per test session."""
    key = (family, dtype)
    if key not in _MODELS:
        _MODELS[key] = tiny_transformer(family, dtype=dtype)
    return _MODELS[key]
