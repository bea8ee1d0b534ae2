"""Toy metrics: the embedded default's analogues of FID and CLIP-SIM, judged by a digit classifier.

- toy FID  = Fréchet distance between penultimate-layer features of generated and real digits;
- toy CLIP = mean probability the judge gives the prompted digit (text-image agreement);
- accuracy = fraction of samples the judge classifies as the prompted digit.

The judge (`ditguide.toy.judge`) is a small MLP trained on the held-out split only (never on the
images the generator learned from); it is trained and saved there, so that editing a metric here never
retrains it. This module judges outputs: nothing here imports a model family or a pipeline. It also
holds the digit benchmark's reference data (the held-out reference, the real-vs-real floor) and its
class-balanced labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..toy.data import DIGIT_WORDS, load_split, to_unit
from ..toy.judge import DigitJudge
from .frechet import frechet_distance, gaussian_stats


@torch.no_grad()
def judge_outputs(judge: DigitJudge, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 64) float64, class probabilities (N, 10) float64)."""
    x = torch.as_tensor(np.asarray(images01), dtype=torch.float32)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"toy metrics take digit images of shape (N, 8, 8) in [0, 1], got {tuple(x.shape)}")
    feats = judge.features(x)
    probs = judge.head(feats).softmax(-1)
    return feats.double().numpy(), probs.double().numpy()


@dataclass(frozen=True)
class ToyReference:
    """Gaussian statistics of the judge's features on a set of real digits."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def from_images(cls, judge: DigitJudge, images01: np.ndarray) -> ToyReference:
        feats, _ = judge_outputs(judge, images01)
        mu, sigma = gaussian_stats(feats)
        return cls(mu, sigma, len(feats))


def toy_metrics(judge: DigitJudge, images01: np.ndarray, labels: np.ndarray, reference: ToyReference) -> dict:
    """{"fd", "clip", "accuracy", "count"} for generated digits prompted with `labels`."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images01):
        raise ValueError(f"labels has {len(labels)} entries for {len(images01)} images")
    feats, probs = judge_outputs(judge, images01)
    mu, sigma = gaussian_stats(feats)
    return {
        "fd": float(frechet_distance(mu, sigma, reference.mu, reference.sigma)),
        "clip": float(probs[np.arange(len(labels)), labels].mean()),
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "count": int(len(labels)),
    }


def label_of_prompt(prompt: str) -> int:
    """The digit a toy prompt asks for (its one digit word)."""
    found = [DIGIT_WORDS.index(w) for w in prompt.lower().split() if w in DIGIT_WORDS]
    if len(found) != 1:
        raise ValueError(f"a toy prompt names exactly one digit word ({', '.join(DIGIT_WORDS)}); got {prompt!r}")
    return found[0]


class ToyJudgeMetric:
    """The toy metrics in the shared evaluation API: value = toy FD; CLIP and accuracy in details."""

    name = "toy_fd"
    higher_is_better = False

    def __init__(self, judge: DigitJudge, reference: ToyReference):
        self.judge, self.reference = judge, reference

    def __call__(self, samples):
        from . import MetricResult

        images = np.stack([samples.image(i)[..., 0] for i in range(len(samples))]).astype(np.float32) / 255.0
        labels = np.array([label_of_prompt(p) for p in samples.prompts])
        m = toy_metrics(self.judge, images, labels, self.reference)
        details = {
            "clip": m["clip"],
            "accuracy": m["accuracy"],
            "judge": "DigitJudge MLP, penultimate 64-d features",
            "reference": f"held-out digits ({self.reference.count})",
        }
        return MetricResult(self.name, m["fd"], False, m["count"], details)


# ----------------------------------------------------------------------------------------------
# the digit benchmark's labels and reference data


def balanced_labels(count: int) -> np.ndarray:
    """Label of sample i is i mod 10, so every prefix of the sample list is (nearly) balanced."""
    return np.arange(count) % 10


def real_floor(judge: DigitJudge, seed: int = 0) -> dict:
    """FD between real digit sets: the level a perfect generator would reach at these sizes.

    - fd_real_halves: two disjoint, stratified halves of all 1,797 digits (the issue's floor);
    - fd_train_vs_heldout: the generator's training split vs the reference (held-out) split.
    """
    from sklearn.model_selection import train_test_split

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
    return ToyReference.from_images(judge, to_unit(load_split("heldout").images))
