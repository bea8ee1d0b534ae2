"""The toy metrics' judge: a digit classifier, its trainer (DVC stage train_judge) and its weights file.

It lives apart from the metrics that use it (`ditguide.metrics.toy`): the judge's weights depend on
this module and the digits only, so editing a metric never retrains it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_path


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

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))


def load_judge(path: str | Path) -> DigitJudge:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy judge weights not found at {path}: run `dvc repro train_judge` to create them")
    judge = DigitJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()
