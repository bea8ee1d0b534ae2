"""Digits data for the toy: scikit-learn's bundled 8x8 handwritten digits (no download).

A fixed stratified split: the diffusion model trains on `train`; the judge (the toy metrics'
classifier) trains on `heldout` only, so it never saw the images the generator imitates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Prompt templates. Training draws one at random per sample, so the prompt encoder has to find the
# digit word among filler words; evaluation uses EVAL_TEMPLATE only.
TEMPLATES = (
    "a handwritten digit {word}",
    "the number {word}",
    "{word}",
    "a digit {word} written by hand",
)
EVAL_TEMPLATE = TEMPLATES[0]

IMAGE_SIZE = 8
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.35


@dataclass(frozen=True)
class DigitSplit:
    images: np.ndarray  # (N, 8, 8) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64


def prompt_for(label: int, template: str = EVAL_TEMPLATE) -> str:
    if not 0 <= int(label) <= 9:
        raise ValueError(f"label must be a digit 0..9, got {label}")
    return template.format(word=DIGIT_WORDS[int(label)])


def to_unit(images: np.ndarray) -> np.ndarray:
    """Model range [-1, 1] -> display range [0, 1]."""
    return np.clip((images + 1.0) / 2.0, 0.0, 1.0)


def load_split(name: str) -> DigitSplit:
    """`name` is "train" or "heldout"; the split is fixed (stratified, seed 0)."""
    if name not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {name!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32)  # pixel range 0..16
    labels = digits.target.astype(np.int64)
    idx_train, idx_heldout = train_test_split(
        np.arange(len(labels)), test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    idx = np.sort(idx_train if name == "train" else idx_heldout)
    return DigitSplit(images=images[idx], labels=labels[idx])
