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


def skip(*blocks):
    return {"edits": [{"op": "skip", "blocks": list(blocks)}]}


def scale(alpha, *blocks):
    return {"edits": [{"op": "scale", "blocks": list(blocks), "alpha": alpha}]}


# CFG against a weakened negative, plus strong/weak autoguidance: four distinct branches on two
# prompts (cond, strong and weak on the positive one, edited at block 1 so they share block 0;
# uncond_weak on the negative one).
FOUR_BRANCH_SPEC = {
    "branches": {
        "weak": {"prompt": "pos", "edits": skip(1)},
        "strong": {"prompt": "pos", "edits": scale(1.5, 1)},
        "uncond_weak": {"prompt": "neg", "edits": skip(1)},
    },
    "terms": [
        {"rule": "cfg", "scale": 3.0, "minus": "uncond_weak"},
        {"rule": "delta", "scale": 1.5, "plus": "strong", "minus": "weak"},
    ],
}
