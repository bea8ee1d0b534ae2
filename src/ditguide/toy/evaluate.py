"""Toy evaluation pieces: class-balanced labels, the real-vs-real floor, the held-out reference."""

from __future__ import annotations

import numpy as np

from ..metrics.toy import DigitJudge, ToyReference


def balanced_labels(count: int) -> np.ndarray:
    """Label of sample i is i mod 10, so every prefix of the sample list is (nearly) balanced."""
    return np.arange(count) % 10


def real_floor(judge: DigitJudge, seed: int = 0) -> dict:
    """FD between real digit sets: the level a perfect generator would reach at these sizes.

    - fd_real_halves: two disjoint, stratified halves of all 1,797 digits (the issue's floor);
    - fd_train_vs_heldout: the generator's training split vs the reference (held-out) split.
    """
    from sklearn.model_selection import train_test_split

    from ..metrics.toy import judge_outputs
    from ..metrics.frechet import frechet_distance, gaussian_stats
    from .data import load_split, to_unit

    train, heldout = load_split("train"), load_split("heldout")
    images = np.concatenate([train.images, heldout.images])
    labels = np.concatenate([train.labels, heldout.labels])
    a, b = train_test_split(np.arange(len(labels)), test_size=0.5, random_state=seed, stratify=labels)

    def fd(x, y):
        fx, _ = judge_outputs(judge, to_unit(x))
        fy, _ = judge_outputs(judge, to_unit(y))
        return float(frechet_distance(*gaussian_stats(fx), *gaussian_stats(fy)))

    return {"fd_real_halves": fd(images[a], images[b]), "fd_train_vs_heldout": fd(train.images, heldout.images)}


def heldout_reference(judge: DigitJudge) -> ToyReference:
    from .data import load_split, to_unit

    return ToyReference.from_images(judge, to_unit(load_split("heldout").images))
