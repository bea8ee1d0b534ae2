"""Toy metrics: the embedded default's analogues of FID and CLIP-SIM, judged by a digit classifier.

- toy FID  = Fréchet distance between penultimate-layer features of generated and real digits;
- toy CLIP = mean probability the judge gives the prompted digit (text-image agreement);
- accuracy = fraction of samples the judge classifies as the prompted digit.

The judge is a small MLP trained on the held-out split only (never on the images the generator
learned from). It is a judge of outputs: nothing here imports a model family or a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .frechet import frechet_distance, gaussian_stats


class DigitJudge(nn.Module):
    """MLP on flattened 8x8 images in [0, 1]; `features` is the 64-d penultimate layer."""

    def __init__(self, hidden: int = 128, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.body(images01.reshape(images01.shape[0], 64).float())

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images01))


def check_judge_parameters(seed: int = 0, epochs: int = 400) -> None:
    """ValueError naming the parameter: an untrained judge (epochs 0) would score every method as noise."""
    for name, value, low in (("seed", seed, 0), ("epochs", epochs, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"train_judge {name}={value!r} is not allowed; allowed: an integer >= {low}")


def train_judge(images01: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 400) -> DigitJudge:
    """Full-batch AdamW with light pixel-noise augmentation; a few seconds on one core."""
    check_judge_parameters(seed, epochs)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = DigitJudge()
    x = torch.as_tensor(images01, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    opt = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(epochs):
        noisy = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        loss = nn.functional.cross_entropy(judge(noisy), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


def save_judge(judge: DigitJudge, path: str | Path) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))
    tmp.replace(path)


def load_judge(path: str | Path) -> DigitJudge:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy judge weights not found at {path}: run `dvc repro train_judge` to create them")
    judge = DigitJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


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
    def from_images(cls, judge: DigitJudge, images01: np.ndarray) -> "ToyReference":
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
    from ..toy.data import DIGIT_WORDS

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
        details = {"clip": m["clip"], "accuracy": m["accuracy"], "judge": "DigitJudge MLP, penultimate 64-d features",
                   "reference": f"held-out digits ({self.reference.count})"}
        return MetricResult(self.name, m["fd"], False, m["count"], details)
