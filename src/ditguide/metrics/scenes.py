"""Glyph-scene metrics: exact per-attribute alignment, and FD / precision / recall in judge features.

The judge (`SceneJudge` in `ditguide.testbeds.judge`, a small CNN trained on renders of the
*held-out* glyph pool only; its weights are a DVC output, so editing a metric here never retrains
it) reads an image as a layout (two glyphs side by side, one above the
other, or one centred) and, for each slot (left/top first), a digit and a colour. A caption's ground
truth (`testbeds.scenes.parse_caption`) says what each slot must hold, so every attribute of every
sample is scored exactly:

- digit / colour: per object, the digit and colour the judge reads in that object's slot;
- relation: the layout's axis matches the caption's relation (the order is in the slot checks);
- all: every attribute of the caption right (the testbed's CLIP-SIM analogue);
- fd: Fréchet distance of the 64-d penultimate judge features to held-out renders of the same
  captions (the FID analogue); precision / recall: Kynkäänniemi et al. (2019), k-NN manifolds (k=3)
  in the same features, so that lost diversity shows up as recall, not only as FD.
"""

from __future__ import annotations

import numpy as np
import torch

from ..testbeds import scenes
from ..testbeds.judge import SceneJudge, load_judge  # noqa: F401  (load_judge: part of this API)
from .frechet import frechet_distance, gaussian_stats

PR_NEIGHBOURS = 3


def _as_images01(images) -> torch.Tensor:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != (scenes.SIZE, scenes.SIZE, 3):
        raise ValueError(f"scene metrics take images of shape (N, {scenes.SIZE}, {scenes.SIZE}, 3), got {x.shape}")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return torch.from_numpy(x)


@torch.no_grad()
def read(judge: SceneJudge, images, batch_size: int = 1000) -> dict[str, np.ndarray]:
    """Judge features (N, 64) float64 and the argmax of every head (N,) for uint8 or [0, 1] images."""
    x = _as_images01(images)
    feats, preds = [], {name: [] for name in judge.heads}
    for start in range(0, len(x), batch_size):
        f = judge.features(x[start : start + batch_size])
        feats.append(f.double().numpy())
        for name, head in judge.heads.items():
            preds[name].append(head(f).argmax(-1).numpy())
    out = {name: np.concatenate(v) for name, v in preds.items()}
    out["features"] = np.concatenate(feats)
    return out


def targets(captions) -> dict[str, np.ndarray]:
    """What the judge should read for each caption (slot 1 = -1 for a single glyph)."""
    parsed = [scenes.parse_caption(c) for c in captions]
    t = {
        "layout": np.array([scenes.LAYOUTS.index(s.layout) for s in parsed]),
        "unseen": np.array([s.unseen for s in parsed]),
    }
    for slot in (0, 1):
        t[f"digit{slot}"] = np.array([s.slots()[slot][0] if slot < len(s.objects) else -1 for s in parsed])
        t[f"colour{slot}"] = np.array([s.slots()[slot][1] if slot < len(s.objects) else -1 for s in parsed])
    return t


def alignment(read_out: dict, captions) -> dict[str, np.ndarray]:
    """Per-sample booleans: digit, colour (both objects), relation, all."""
    t = targets(captions)
    two = t["digit1"] >= 0
    digit = (read_out["digit0"] == t["digit0"]) & (~two | (read_out["digit1"] == t["digit1"]))
    colour = (read_out["colour0"] == t["colour0"]) & (~two | (read_out["colour1"] == t["colour1"]))
    relation = read_out["layout"] == t["layout"]
    # Per object: the fraction of objects whose digit (colour) is right, for the per-attribute table.
    n_obj = 1 + two
    # (int, not bool: numpy's bool + bool is a logical or)
    digit_obj = ((read_out["digit0"] == t["digit0"]).astype(int) + (two & (read_out["digit1"] == t["digit1"]))) / n_obj
    colour_obj = (
        (read_out["colour0"] == t["colour0"]).astype(int) + (two & (read_out["colour1"] == t["colour1"]))
    ) / n_obj
    return {
        "digit": digit_obj,
        "colour": colour_obj,
        "relation": relation,
        "all": digit & colour & relation,
        "unseen": t["unseen"],
    }


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = share of fakes inside the real k-NN manifold; recall =
    share of reals inside the fake k-NN manifold."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(
            f"precision/recall with k={k} neighbours needs more than {k} samples per set; "
            f"got {len(fake)} generated and {len(real)} reference samples"
        )
    real_r, fake_r = _knn_radii(real, k), _knn_radii(fake, k)
    d = _pairwise(fake, real)  # (fake, real)
    precision = float((d <= real_r[None, :]).any(1).mean())
    recall = float((d.T <= fake_r[None, :]).any(1).mean())
    return precision, recall


def scene_metrics(read_out: dict, captions, reference_features: np.ndarray) -> dict:
    """Every testbed metric of one sample set against reference features."""
    a = alignment(read_out, captions)
    feats = read_out["features"]
    p, r = precision_recall(reference_features, feats)
    out = {
        "fd": float(frechet_distance(*gaussian_stats(feats), *gaussian_stats(reference_features))),
        "precision": p,
        "recall": r,
        "count": int(len(feats)),
    }
    for key in ("all", "digit", "colour", "relation"):
        out[key] = float(np.mean(a[key]))
    if a["unseen"].any():
        out["all_unseen"] = float(np.mean(a["all"][a["unseen"]]))
    return out
