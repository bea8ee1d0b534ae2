"""Train the glyph-scene judge (DVC stage train_scenes_judge), on held-out-pool renders only.

The generator never saw these glyphs and the judge never sees the generator's glyphs, so the judge's
accuracy on renders of the *train* pool is an honest estimate of how well it reads new handwriting.
The metrics that use it live in `ditguide.metrics.scenes`; editing a metric does not retrain it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import write_text_atomic
from . import scenes

FEATURES = 64


class SceneJudge(nn.Module):
    """CNN on (N, 16, 16, 3) images in [0, 1]. Heads: layout (3), then digit (10) and colour (6) of
    slot 0 and slot 1 (slot 1 is meaningless for a single glyph)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, FEATURES),
            nn.ReLU(),
        )
        n_col = len(scenes.COLOURS)
        self.heads = nn.ModuleDict(
            {
                "layout": nn.Linear(FEATURES, len(scenes.LAYOUTS)),
                "digit0": nn.Linear(FEATURES, 10),
                "colour0": nn.Linear(FEATURES, n_col),
                "digit1": nn.Linear(FEATURES, 10),
                "colour1": nn.Linear(FEATURES, n_col),
            }
        )

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.body(images01.permute(0, 3, 1, 2).float())

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images01)
        return {name: head(f) for name, head in self.heads.items()}


def save_judge(judge: SceneJudge, path: str | Path) -> None:
    from safetensors.torch import save_file

    from ..io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))


def load_judge(path: str | Path) -> SceneJudge:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"scene judge weights not found at {path}: run `dvc repro train_scenes_judge` to create them"
        )
    judge = SceneJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


@dataclass(frozen=True)
class JudgeTrainConfig:
    seed: int = 0
    renders: int = 30000  # training set size (held-out pool, every pair, singles included)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    noise: float = 0.08  # pixel noise augmentation (generated images are not clean renders)

    def __post_init__(self):
        for name in self.__dataclass_fields__:  # types first: YAML reads 1e-4 as a string
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"train_scenes_judge.{name}={value!r} is out of range; allowed: a number")
        rules = {
            "seed": self.seed >= 0,
            "renders": self.renders >= 100,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": 0 < self.lr < 1,
            "noise": 0 <= self.noise < 1,
        }
        for name, ok in rules.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
                raise ValueError(f"train_scenes_judge.{name}={value!r} is out of range")


def _labels(batch: list[scenes.Scene]) -> dict[str, torch.Tensor]:
    out = {"layout": torch.tensor([scenes.LAYOUTS.index(s.layout) for s in batch])}
    for slot in (0, 1):
        out[f"digit{slot}"] = torch.tensor([s.slots()[slot][0] if slot < len(s.objects) else -100 for s in batch])
        out[f"colour{slot}"] = torch.tensor([s.slots()[slot][1] if slot < len(s.objects) else -100 for s in batch])
    return out


def train_judge(cfg: JudgeTrainConfig = JudgeTrainConfig(), progress: bool = True) -> SceneJudge:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    glyphs, labels = scenes.glyph_pool("heldout")
    batch = scenes.sample_scenes(cfg.renders, rng, pairs="all")
    x = torch.from_numpy(scenes.render(batch, glyphs, labels, rng))
    y = _labels(batch)
    judge = SceneJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    bar = tqdm(total=steps, desc="train scene judge", disable=not progress, mininterval=5)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = x[idx] * (0.8 + 0.4 * torch.rand(len(idx), 1, 1, 1, generator=gen))  # brightness
            xb = (xb + cfg.noise * torch.randn(xb.shape, generator=gen)).clamp(0, 1)
            out = judge(xb)
            loss = sum(loss_fn(out[k], y[k][idx]) for k in out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return judge.eval()


def judge_accuracy(judge: SceneJudge, pool: str = "train", count: int = 4000, seed: int = 1) -> dict[str, float]:
    """Per-attribute accuracy of the judge on clean renders of a glyph pool (all pairs, singles included)."""
    rng = np.random.default_rng(seed)
    glyphs, labels = scenes.glyph_pool(pool)
    batch = scenes.sample_scenes(count, rng, pairs="all")
    with torch.no_grad():
        out = {
            k: v.argmax(-1).numpy()
            for k, v in judge(torch.from_numpy(scenes.render(batch, glyphs, labels, rng))).items()
        }
    y = {k: v.numpy() for k, v in _labels(batch).items()}
    acc = {}
    for key in ("layout", "digit0", "colour0", "digit1", "colour1"):
        keep = y[key] >= 0
        acc[key] = float((out[key][keep] == y[key][keep]).mean())
    return acc


def train_and_save_judge(out: str | Path, cfg: JudgeTrainConfig = JudgeTrainConfig()) -> dict:
    judge = train_judge(cfg)
    report = {
        "config": asdict(cfg),
        "trained_on": "renders of the held-out glyph pool",
        "accuracy_on_train_pool_renders": judge_accuracy(judge, "train"),
    }
    save_judge(judge, out)
    report_path = Path(str(out).rsplit(".", 1)[0] + "_report.json")
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    return report
