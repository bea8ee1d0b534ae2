"""A VBench-shaped score for the moving-shapes T2V testbed, with exact judges.

The judges need no training: the generator (`ditguide.testbeds.clips`) is known, so a frame is read
by inverting it. Per frame, the background is the per-channel median (objects cover < 30 % of the
canvas); each pixel's coverage by each palette colour is its projection on (colour - background),
and a pixel belongs to the colour whose mixture explains it best. A colour with coverage mass >=
MIN_MASS px is a detected object ("blob"): its centroid, and its shape and size by the best soft
Dice match against the generator's own anti-aliased templates placed on the same centroid. A
track is the blob of one colour over the frames; its velocity is the least-squares slope.

Dimensions (each beside VBench's definition; `DIMENSIONS` maps ours to VBench's names):

Quality
- subject_consistency: VBench: DINO features of each frame, mean over frames of the cosine to the
  first and to the previous frame (averaged). Ours: the same average of cosines, with the judge's
  features: for each colour, its coverage mass (capped) times its soft-Dice match to each shape.
- background_consistency: VBench: the same with CLIP features of the whole frame. Ours: 1 - the mean
  absolute difference (in [0, 1]) over pixels that are background in both frames, to the first
  and to the previous frame. (A cosine of flat grey backgrounds would always be 1.)
- temporal_flickering: VBench: (255 - MAE between consecutive frames) / 255, on its static-scene
  prompts. Ours: the same formula, restricted to the static region (pixels background in both
  frames), since our clips move.
- motion_smoothness: VBench: the error of a frame-interpolation model (AMT) reconstructing dropped
  frames, (255 - MAE) / 255. Ours: 1 - RMS deviation of each captioned object's track from the best
  constant-velocity line, as a fraction of the canvas (the generator moves every object at constant
  velocity); an object tracked in < 3 frames scores 0. Mean over the caption's objects.
- dynamic_degree: VBench: a video is dynamic if RAFT optical flow (mean of its top 5 %) exceeds a
  threshold in enough frame pairs; the score is the fraction of dynamic videos (weight 0.5).
  Ours: a clip is dynamic if any detected track moves >= DYNAMIC_SPEED px per frame.
- imaging_quality: VBench: MUSIQ per frame (technical quality), mean. Ours: per frame, the mean soft
  Dice of the detected blobs to their best template (0 for a frame with none), mean over frames.
Semantic
- object_class: VBench: the fraction of frames in which GRiT detects the object class. Ours: the
  fraction of frames with a blob of the captioned shape (any colour), per object, over all frames.
- multiple_objects: VBench: the fraction of frames in which both objects are detected. Ours: the
  same with both captioned shapes among the blobs (two-object captions).
- color: VBench: over frames where the object is detected, the fraction whose colour is the
  captioned one, per video, mean over videos. Ours: over frames with a blob of the captioned shape,
  the fraction where such a blob has the captioned colour, per object, mean over clips that have one.
- spatial_relationship: VBench: per frame, 1 if the box centres differ mostly along the
  relation's axis with the right sign and the boxes overlap (IoU) < 0.1 (else 0.1 / IoU, or 0),
  mean over frames. Ours: the same rule on the captioned objects' blobs (colour and shape), with
  the axis test "in order along the relation's axis, overlapping there by <= 1 px" (the
  generator's definition: the two halves of the canvas), 0 in frames where one is missing.
- human_action (our "motion"): VBench: UMT action classification, top-5 hit per video. Ours: the
  direction read from the track of the captioned colour (dominant axis of the slope, or "staying
  still" below DYNAMIC_SPEED) equals the captioned motion, per object, mean per clip.
VBench's other dimensions (aesthetic quality, scene, appearance and temporal style, overall
consistency) have no counterpart here; Quality and Semantic are the weighted means over the
dimensions present, normalised and weighted exactly as VBench (`metrics.vbench_score`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..testbeds import clips as C
from . import vbench_score as vb

MIN_MASS = 5.0  # px of coverage for a detected object (the smallest object covers ~12 px)
DYNAMIC_SPEED = 0.5  # px per frame: half the generator's slowest speed
ASSIGN_MIN = 0.15  # minimum coverage for a pixel to count for a colour
ASSIGN_RESIDUAL = 0.25  # a pixel further than this from every colour mixture is background / noise
SIZES = tuple(sorted(set(C.SINGLE_SIZES) | set(C.PAIR_SIZES)))
# template centroid within the unit square (the triangle's is lower)
_CENTROID_V = {"square": 0.5, "circle": 0.5, "triangle": 2.0 / 3.0, "cross": 0.5}
_PALETTE = np.array([C.PALETTE[c] for c in C.COLOURS], dtype=np.float64)

# Our dimension -> VBench's name (for the normalisation and the Quality / Semantic split).
DIMENSIONS = {
    "subject_consistency": "subject_consistency",
    "background_consistency": "background_consistency",
    "temporal_flickering": "temporal_flickering",
    "motion_smoothness": "motion_smoothness",
    "dynamic_degree": "dynamic_degree",
    "imaging_quality": "imaging_quality",
    "object_class": "object_class",
    "multiple_objects": "multiple_objects",
    "color": "color",
    "spatial_relationship": "spatial_relationship",
    "motion": "human_action",
}
QUALITY = tuple(d for d, v in DIMENSIONS.items() if v in vb.QUALITY_DIMENSIONS)
SEMANTIC = tuple(d for d, v in DIMENSIONS.items() if v in vb.SEMANTIC_DIMENSIONS)


def _as_videos01(videos) -> np.ndarray:
    x = np.asarray(videos)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[2:] != (C.SIZE, C.SIZE, 3) or x.shape[1] < 2:
        raise ValueError(f"clip metrics take videos of shape (N, frames >= 2, {C.SIZE}, {C.SIZE}, 3), got {x.shape}")
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


# --- reading a frame ---------------------------------------------------------------------------------

_TEMPLATES: dict = {}


def _template(shape: str, size: int, cx: float, cy: float) -> np.ndarray:
    key = (shape, size, round(cx * 8) / 8, round(cy * 8) / 8)  # 1/8 px: plenty for 4x supersampling
    t = _TEMPLATES.get(key)
    if t is None:
        if len(_TEMPLATES) > 200_000:
            _TEMPLATES.clear()
        t = C.coverage(shape, key[2] - 0.5 * size, key[3] - _CENTROID_V[shape] * size, size).astype(np.float64)
        _TEMPLATES[key] = t
    return t


@dataclass
class Blob:
    colour: int
    mass: float
    centroid: tuple[float, float]  # (x, y) in pixels
    shape: int
    size: int
    quality: float  # soft Dice with the best template, in [0, 1]
    shape_scores: np.ndarray  # (len(SHAPES),) best soft Dice per shape
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the matched template


def coverage_maps(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(colours, H, W) coverage of each palette colour and the (H, W) background mask of a frame."""
    bg = np.median(frame.reshape(-1, 3), axis=0)
    d = frame - bg  # (H, W, 3)
    diff = _PALETTE - bg  # (K, 3)
    cov = np.einsum("hwc,kc->khw", d, diff) / (diff**2).sum(-1)[:, None, None]
    cov = np.clip(cov, 0.0, 1.0)
    resid = np.linalg.norm(d[None] - cov[..., None] * diff[:, None, None, :], axis=-1)  # (K, H, W)
    resid = np.where(cov >= ASSIGN_MIN, resid, np.inf)
    best = resid.argmin(0)
    ok = np.take_along_axis(resid, best[None], 0)[0] < ASSIGN_RESIDUAL
    maps = np.zeros_like(cov)
    for k in range(len(_PALETTE)):
        sel = ok & (best == k)
        maps[k][sel] = cov[k][sel]
    background = maps.sum(0) < 0.05
    return maps, background


def read_frame(frame: np.ndarray) -> tuple[list[Blob], np.ndarray]:
    """The blobs of one (H, W, 3) frame in [0, 1], and its background mask."""
    maps, background = coverage_maps(frame)
    blobs = []
    ys, xs = np.mgrid[0 : C.SIZE, 0 : C.SIZE] + 0.5
    for k, m in enumerate(maps):
        mass = float(m.sum())
        if mass < MIN_MASS:
            continue
        cx, cy = float((m * xs).sum() / mass), float((m * ys).sum() / mass)
        mm = float((m * m).sum())
        scores = np.zeros(len(C.SHAPES))
        best = (-1.0, 0, SIZES[0])
        for s, shape in enumerate(C.SHAPES):
            for size in SIZES:
                t = _template(shape, size, cx, cy)
                dice = 2.0 * float((m * t).sum()) / (mm + float((t * t).sum()))
                if dice > scores[s]:
                    scores[s] = dice
                if dice > best[0]:
                    best = (dice, s, size)
        q, s, size = best
        x0, y0 = cx - 0.5 * size, cy - _CENTROID_V[C.SHAPES[s]] * size
        blobs.append(Blob(k, mass, (cx, cy), s, size, max(0.0, q), scores, (x0, y0, x0 + size, y0 + size)))
    return blobs, background


@dataclass
class ClipReading:
    """A clip as the judge reads it: the blobs and background mask of every frame."""

    blobs: list[list[Blob]]
    background: np.ndarray  # (F, H, W) bool
    frames: np.ndarray = field(repr=False)  # (F, H, W, 3) in [0, 1]

    def blob(self, f: int, colour: int) -> Blob | None:
        return next((b for b in self.blobs[f] if b.colour == colour), None)

    def track(self, colour: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices, (n, 2) centroids) of one colour's blob."""
        fs = [f for f in range(len(self.blobs)) if self.blob(f, colour) is not None]
        return np.array(fs, dtype=np.float64), np.array(
            [self.blob(f, colour).centroid for f in fs], dtype=np.float64
        ).reshape(-1, 2)


def read_clip(video) -> ClipReading:
    x = _as_videos01(video)[0]
    per = [read_frame(f) for f in x]
    return ClipReading([p[0] for p in per], np.stack([p[1] for p in per]), x)


def velocity(ts: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares constant velocity (vx, vy) of a track and the RMS distance of the track from that line."""
    if len(ts) < 2:
        return np.zeros(2), np.inf
    A = np.stack([ts, np.ones_like(ts)], 1)
    coef, *_ = np.linalg.lstsq(A, pts, rcond=None)
    resid = pts - A @ coef
    return coef[0], float(np.sqrt((resid**2).sum(1).mean()))


def motion_of(v: np.ndarray) -> str:
    """The motion word a velocity (vx, vy) shows."""
    vx, vy = float(v[0]), float(v[1])
    if max(abs(vx), abs(vy)) < DYNAMIC_SPEED:
        return "staying still"
    if abs(vx) >= abs(vy):
        return "moving right" if vx > 0 else "moving left"
    return "moving down" if vy > 0 else "moving up"


# --- dimensions of one clip ---------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _first_and_previous(n: int, sim) -> float:
    """VBench's consistency average: mean over frames i >= 1 of (sim(0, i) + sim(i - 1, i)) / 2."""
    return float(np.mean([(sim(0, i) + sim(i - 1, i)) / 2.0 for i in range(1, n)]))


def subject_features(r: ClipReading) -> np.ndarray:
    """(F, colours * shapes) judge features: per colour, min(mass / 20, 1) x soft Dice per shape."""
    out = np.zeros((len(r.blobs), len(C.COLOURS), len(C.SHAPES)))
    for f, blobs in enumerate(r.blobs):
        for b in blobs:
            out[f, b.colour] = min(b.mass / 20.0, 1.0) * b.shape_scores
    return out.reshape(len(r.blobs), -1)


def _relation_score(relation: str, a: Blob, b: Blob, iou_threshold: float = 0.1) -> float:
    """VBench's get_position_score, with the axis test replaced by the generator's definition (a is
    the caption's first object): the boxes are in the captioned order along the relation's axis and
    overlap there by at most 1 px (VBench asks the centre offset to be larger along that axis than
    across it, which objects in the two halves of a small canvas need not satisfy). Then 1 if the
    boxes' IoU < 0.1, else 0.1 / IoU, as VBench."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    first, second = {
        "left of": ((ax0, ax1), (bx0, bx1)),
        "right of": ((bx0, bx1), (ax0, ax1)),
        "above": ((ay0, ay1), (by0, by1)),
        "below": ((by0, by1), (ay0, ay1)),
    }[relation]
    if not (first[0] + first[1] < second[0] + second[1] and first[1] - second[0] <= 1.0):
        return 0.0
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    iou = inter / union if union > 0 else 0.0
    return 1.0 if iou < iou_threshold else iou_threshold / iou


def clip_scores(r: ClipReading, clip: C.Clip) -> dict[str, float]:
    """Every dimension of one clip (NaN where a dimension does not apply), plus the acceptance flags."""
    out = _frame_scores(r)
    speeds = [0.0]
    for colour in range(len(C.COLOURS)):
        ts, pts = r.track(colour)
        if len(ts) >= 3:
            v, _ = velocity(ts, pts)
            speeds.append(float(np.hypot(*v)))
    out["dynamic_degree"] = float(max(speeds) >= DYNAMIC_SPEED)
    objs = clip.objects
    shape_ids = [C.SHAPES.index(o.shape) for o in objs]
    colour_ids = [C.COLOURS.index(o.colour) for o in objs]
    out.update(_object_scores(r, objs, shape_ids, colour_ids))
    if len(objs) == 2:
        out.update(_pair_scores(r, clip.relation, shape_ids, colour_ids))
    else:
        out["multiple_objects"] = out["spatial_relationship"] = float("nan")
    out["all_correct"] = float(out["shown_and_moving"] and (len(objs) == 1 or out["spatial_relationship"] > 0.5))
    return out


def _frame_scores(r: ClipReading) -> dict[str, float]:
    """The whole-frame dimensions: subject and background consistency, temporal flickering, imaging quality."""
    F = len(r.blobs)
    out: dict[str, float] = {}
    feats = subject_features(r)
    out["subject_consistency"] = _first_and_previous(F, lambda i, j: _cos(feats[i], feats[j]))

    def bg_sim(i, j):
        both = r.background[i] & r.background[j]
        return 1.0 - float(np.abs(r.frames[i][both] - r.frames[j][both]).mean()) if both.any() else 0.0

    out["background_consistency"] = _first_and_previous(F, bg_sim)
    flicker = []
    for i in range(F - 1):
        both = r.background[i] & r.background[i + 1]
        mae = float(np.abs(r.frames[i][both] - r.frames[i + 1][both]).mean()) * 255.0 if both.any() else 255.0
        flicker.append(mae)
    out["temporal_flickering"] = (255.0 - float(np.mean(flicker))) / 255.0
    out["imaging_quality"] = float(np.mean([np.mean([b.quality for b in bl]) if bl else 0.0 for bl in r.blobs]))
    return out


def _object_scores(r: ClipReading, objs, shape_ids: list[int], colour_ids: list[int]) -> dict[str, float]:
    """Per captioned object, averaged: motion smoothness, the captioned motion, object class, colour, and
    whether every object is shown in most frames and moves as captioned."""
    F = len(r.blobs)
    smooth, motion, shown = [], [], []
    object_frames, colour_rates = [], []
    for o, s, c in zip(objs, shape_ids, colour_ids):
        ts, pts = r.track(c)
        v, rms = velocity(ts, pts)
        smooth.append(max(0.0, 1.0 - rms / C.SIZE) if len(ts) >= 3 else 0.0)
        right_motion = len(ts) >= 2 and motion_of(v) == o.motion
        motion.append(float(right_motion))
        seen = sum(1 for f in range(F) if (b := r.blob(f, c)) is not None and b.shape == s)
        shown.append(seen > F / 2 and right_motion)
        object_frames.append([any(b.shape == s for b in r.blobs[f]) for f in range(F)])
        with_shape = [f for f in range(F) if any(b.shape == s for b in r.blobs[f])]
        if with_shape:
            colour_rates.append(np.mean([any(b.shape == s and b.colour == c for b in r.blobs[f]) for f in with_shape]))
    return {
        "motion_smoothness": float(np.mean(smooth)),
        "motion": float(np.mean(motion)),
        "object_class": float(np.mean(object_frames)),
        "color": float(np.mean(colour_rates)) if colour_rates else float("nan"),
        "shown_and_moving": float(all(shown)),
    }


def _pair_scores(r: ClipReading, relation: str, shape_ids: list[int], colour_ids: list[int]) -> dict[str, float]:
    """The two-object dimensions: both shapes present per frame, and the captioned spatial relation."""
    need = sorted(shape_ids)
    multi = []
    rel = []
    for f in range(len(r.blobs)):
        have = sorted(b.shape for b in r.blobs[f])
        multi.append(all(have.count(s) >= need.count(s) for s in set(need)))
        a, b = r.blob(f, colour_ids[0]), r.blob(f, colour_ids[1])
        ok = a is not None and b is not None and a.shape == shape_ids[0] and b.shape == shape_ids[1]
        rel.append(_relation_score(relation, a, b) if ok else 0.0)
    return {"multiple_objects": float(np.mean(multi)), "spatial_relationship": float(np.mean(rel))}


PER_CLIP = (*DIMENSIONS, "shown_and_moving", "all_correct")


def score_clips(videos, captions) -> dict[str, np.ndarray]:
    """Per-clip scores {dimension: (N,) array, NaN where it does not apply} of videos against captions."""
    x = _as_videos01(videos)
    parsed = [C.parse_caption(c) for c in captions]
    if len(parsed) != len(x):
        raise ValueError(f"{len(x)} videos and {len(parsed)} captions")
    rows = [clip_scores(read_clip(v), clip) for v, clip in zip(x, parsed)]
    out = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in PER_CLIP}
    out["unseen"] = np.array([p.unseen for p in parsed], dtype=bool)
    return out


def aggregate(per_clip: dict[str, np.ndarray]) -> dict[str, float]:
    """Raw dimension scores of a set of clips (mean over the clips each applies to; VBench's
    frame-pooled dimensions are frame means per clip with equal frame counts, so the same), plus
    the VBench-normalised Quality, Semantic and Total over our dimensions."""
    raw = {}
    for d in PER_CLIP:
        v = per_clip[d][~np.isnan(per_clip[d])]
        raw[d] = float(v.mean()) if len(v) else float("nan")
    if np.isnan(raw["color"]) and len(per_clip["color"]):
        # Colour is judged on the clips that show a captioned shape. When none does (a badly broken
        # model, a small set), no colour is right: 0, not undefined, so the Total stays comparable.
        raw["color"] = 0.0
    out = dict(raw)
    out.update(vbench_shaped(raw))
    return out


def vbench_shaped(raw: dict[str, float]) -> dict[str, float]:
    """VBench's normalisation and weights over our dimensions: n_d = (raw - Min) / (Max - Min) * w_d
    (w = 0.5 for dynamic degree), Quality = sum n_d / sum w_d over our quality dimensions, Semantic
    likewise, Total = (4 Quality + Semantic) / 5."""
    missing = [d for d in DIMENSIONS if d not in raw or not np.isfinite(raw[d])]
    if missing:
        raise ValueError(f"the VBench-shaped total needs every dimension; missing or undefined: {', '.join(missing)}")
    n = vb.normalized_scores({DIMENSIONS[d]: raw[d] for d in DIMENSIONS})
    q = sum(n[DIMENSIONS[d]] for d in QUALITY) / sum(vb.WEIGHTS[DIMENSIONS[d]] for d in QUALITY)
    s = sum(n[DIMENSIONS[d]] for d in SEMANTIC) / sum(vb.WEIGHTS[DIMENSIONS[d]] for d in SEMANTIC)
    return {
        "quality": q,
        "semantic": s,
        "total": (vb.QUALITY_WEIGHT * q + vb.SEMANTIC_WEIGHT * s) / (vb.QUALITY_WEIGHT + vb.SEMANTIC_WEIGHT),
    }
