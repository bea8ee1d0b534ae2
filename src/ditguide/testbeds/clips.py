"""Moving captioned shapes: the text-to-video testbed, generated procedurally with ground truth.

A clip is FRAMES frames of SIZE x SIZE RGB: one or two simple shapes (square, circle, triangle,
cross), each with a colour and a motion, on a grey background, and for two objects a spatial
relation:

    "a red square moving left"
    "a blue triangle moving up left of a green circle staying still"

Every caption reads `a <colour> <shape> <motion> [<relation> a <colour> <shape> <motion>]`; a
motion is "moving left/right/up/down" or "staying still". Two objects sit in the two halves of the
canvas (left/right for "left of"/"right of", top/bottom for "above"/"below") and move only across
that axis (or stay still), so the captioned relation holds in every frame.

Nuisance, so that a model can get things wrong without a caption saying so: the speed (0.9-1.2 px
per frame), the object size (5-6 px alone, 5 px in pairs), the start position and the background
shade (grey, 0-0.2) vary per clip; objects are anti-aliased (4x supersampling), so motion is
sub-pixel. Every render comes with its ground truth (`ClipTruth`): per object and frame, the
top-left corner, size, colour and shape, so the judges (`ditguide.metrics.clips`) score it exactly.

Splits. A few (shape, motion) pairs never appear in training captions (`HELDOUT_PAIRS`); caption
set "unseen" always holds one. "dev" (tuning) and "test" (reporting) are fixed, disjoint seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 12
FRAMES = 6
SUPERSAMPLE = 4
SHAPES = ("square", "circle", "triangle", "cross")
PALETTE = {
    "red": (0.95, 0.15, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.90, 0.10),
}
COLOURS = tuple(PALETTE)
# motion -> unit velocity (dx, dy) in pixels (x right, y down)
MOTIONS = {
    "moving left": (-1.0, 0.0),
    "moving right": (1.0, 0.0),
    "moving up": (0.0, -1.0),
    "moving down": (0.0, 1.0),
    "staying still": (0.0, 0.0),
}
MOTION_NAMES = tuple(MOTIONS)
RELATIONS = ("left of", "right of", "above", "below")
# Motions allowed with a relation: across the relation's axis, so the relation holds in every frame.
RELATION_MOTIONS = {
    "left of": ("moving up", "moving down", "staying still"),
    "right of": ("moving up", "moving down", "staying still"),
    "above": ("moving left", "moving right", "staying still"),
    "below": ("moving left", "moving right", "staying still"),
}
SPEED = (0.9, 1.2)  # px per frame, uniform per clip and object (a 5-6 px track fits the 12 px canvas)
SINGLE_SIZES = (5, 6)
PAIR_SIZES = (5,)  # two 5 px objects in the two 6 px halves
BACKGROUND = (0.0, 0.2)  # grey shade, uniform per clip
# (shape, motion) pairs never used in training captions: one moving direction per shape.
HELDOUT_PAIRS = frozenset(
    {("square", "moving left"), ("circle", "moving up"), ("triangle", "moving right"), ("cross", "moving down")}
)
SINGLE_FRACTION = 0.5  # of training captions
MAX_WORDS = 12  # "a c s moving d left of a c s moving d"


class ClipError(ValueError):
    """A caption or clip the generator cannot draw; the message says what is allowed."""


def vocabulary() -> list[str]:
    """Every word a clip caption may use, in a fixed order (the prompt encoder's vocabulary)."""
    words = ["a", *COLOURS, *SHAPES]
    for phrase in (*MOTIONS, *RELATIONS):
        words += [w for w in phrase.split() if w not in words]
    return words


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    motion: str

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion}"


@dataclass(frozen=True)
class Clip:
    """Ground truth of one caption: objects in caption order, and their relation (two objects)."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self):
        if len(self.objects) not in (1, 2):
            raise ClipError(f"a clip has 1 or 2 objects, got {len(self.objects)}")
        for o in self.objects:
            if o.shape not in SHAPES:
                raise ClipError(f"shape {o.shape!r} cannot be drawn; allowed: {', '.join(SHAPES)}")
            if o.colour not in PALETTE:
                raise ClipError(f"colour {o.colour!r} cannot be drawn; allowed: {', '.join(COLOURS)}")
            if o.motion not in MOTIONS:
                raise ClipError(f"motion {o.motion!r} cannot be drawn; allowed: {', '.join(MOTIONS)}")
        if len(self.objects) == 2:
            if self.relation not in RELATIONS:
                raise ClipError(f"relation {self.relation!r} cannot be drawn; allowed: {', '.join(RELATIONS)}")
            if self.objects[0].colour == self.objects[1].colour:
                raise ClipError("the two objects of a clip need different colours (else the caption is ambiguous)")
            for o in self.objects:
                if o.motion not in RELATION_MOTIONS[self.relation]:
                    raise ClipError(
                        f"in a '{self.relation}' clip an object cannot be '{o.motion}' (the relation would "
                        f"not hold in every frame); allowed: {', '.join(RELATION_MOTIONS[self.relation])}"
                    )
        elif self.relation is not None:
            raise ClipError("a single-object clip has no relation")

    @property
    def unseen(self) -> bool:
        return any((o.shape, o.motion) in HELDOUT_PAIRS for o in self.objects)

    def caption(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"


def parse_caption(caption: str) -> Clip:
    """The clip a caption describes; one clear error for words or structures the generator cannot draw."""
    if not isinstance(caption, str):
        raise ClipError(f"a caption is a string, got {caption!r}")
    words = caption.lower().split()
    known = set(vocabulary())
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ClipError(
            f"caption {caption!r} has words outside the vocabulary: {unknown}; vocabulary: {' '.join(vocabulary())}"
        )

    def obj(part: list[str]) -> Obj:
        motion = " ".join(part[3:])
        if len(part) != 5 or part[0] != "a" or part[1] not in PALETTE or part[2] not in SHAPES or motion not in MOTIONS:
            raise ClipError(
                f"caption {caption!r}: an object is 'a <colour> <shape> <motion>' (colours: {', '.join(COLOURS)}; "
                f"shapes: {', '.join(SHAPES)}; motions: {', '.join(MOTIONS)}), got {' '.join(part)!r}"
            )
        return Obj(part[2], part[1], motion)

    if len(words) == 5:
        return Clip((obj(words),))
    for rel in RELATIONS:
        n = len(rel.split())
        if len(words) == 10 + n and " ".join(words[5 : 5 + n]) == rel:
            return Clip((obj(words[:5]), obj(words[5 + n :])), rel)
    raise ClipError(
        f"caption {caption!r} is not 'a <colour> <shape> <motion>' or "
        f"'a <colour> <shape> <motion> <relation> a <colour> <shape> <motion>' (relations: {', '.join(RELATIONS)})"
    )


def sample_clips(
    count: int, rng: np.random.Generator, *, single_fraction: float = SINGLE_FRACTION, pairs: str = "seen"
) -> list[Clip]:
    """Random clips. pairs: "seen" (no held-out (shape, motion) pair: the training distribution),
    "unseen" (at least one held-out pair) or "all"."""
    if pairs not in ("seen", "unseen", "all"):
        raise ClipError(f"pairs must be 'seen', 'unseen' or 'all', got {pairs!r}")
    out: list[Clip] = []
    while len(out) < count:
        single = rng.random() < single_fraction
        colours = rng.choice(len(COLOURS), size=2, replace=False)
        shapes = rng.integers(0, len(SHAPES), size=2)
        if single:
            objs = (Obj(SHAPES[shapes[0]], COLOURS[colours[0]], MOTION_NAMES[rng.integers(len(MOTIONS))]),)
            clip = Clip(objs)
        else:
            rel = RELATIONS[rng.integers(len(RELATIONS))]
            allowed = RELATION_MOTIONS[rel]
            objs = tuple(
                Obj(SHAPES[shapes[k]], COLOURS[colours[k]], allowed[rng.integers(len(allowed))]) for k in range(2)
            )
            clip = Clip(objs, rel)
        if (pairs == "seen" and clip.unseen) or (pairs == "unseen" and not clip.unseen):
            continue
        out.append(clip)
    return out


def caption_set(split: str, count: int) -> list[Clip]:
    """Fixed evaluation captions: "dev" (tuning) and "test" (reporting) from the training distribution
    (half single, half pairs), "unseen" with a held-out (shape, motion) pair. Disjoint seeds."""
    seeds = {"dev": 101, "test": 202, "unseen": 303}
    if split not in seeds:
        raise ClipError(f"caption split must be one of {', '.join(seeds)}, got {split!r}")
    if not (isinstance(count, int) and count >= 1):
        raise ClipError(f"count must be an integer >= 1, got {count!r}")
    return sample_clips(count, np.random.default_rng(seeds[split]), pairs="unseen" if split == "unseen" else "seen")


# --- rendering -------------------------------------------------------------------------------------


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the point (u, v) of the unit square (u right, v down) lies inside `shape`."""
    if shape == "square":
        return (u >= 0.0) & (u < 1.0) & (v >= 0.0) & (v < 1.0)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25
    if shape == "triangle":  # apex up, base down
        return (v >= 0.0) & (v < 1.0) & (np.abs(u - 0.5) < 0.5 * v)
    if shape == "cross":  # a plus sign, arms 0.36 wide
        inside = (u >= 0.0) & (u < 1.0) & (v >= 0.0) & (v < 1.0)
        return inside & ((np.abs(u - 0.5) < 0.18) | (np.abs(v - 0.5) < 0.18))
    raise ClipError(f"shape {shape!r} cannot be drawn; allowed: {', '.join(SHAPES)}")


_SUB = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # supersample centres in pixel units


def coverage(shape: str, x: float, y: float, size: float, canvas: int = SIZE) -> np.ndarray:
    """(canvas, canvas) fraction of each pixel covered by `shape` with top-left (x, y) and side `size`."""
    sub = (np.arange(canvas * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    u = (sub[None, :] - x) / size
    v = (sub[:, None] - y) / size
    m = shape_mask(shape, u, v).astype(np.float32)
    return m.reshape(canvas, SUPERSAMPLE, canvas, SUPERSAMPLE).mean(axis=(1, 3))


@dataclass(frozen=True)
class ClipTruth:
    """What a render shows. positions: (objects, FRAMES, 2) top-left (x, y); sizes, speeds: per object."""

    clip: Clip
    positions: np.ndarray
    sizes: tuple[float, ...]
    speeds: tuple[float, ...]
    background: float

    def centroids(self) -> np.ndarray:
        """(objects, FRAMES, 2) centre of each object's bounding square (x, y)."""
        return self.positions + np.array(self.sizes, dtype=np.float64)[:, None, None] / 2


def _layout(clip: Clip, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, list[float], list[float]]:
    n = len(clip.objects)
    sizes = [float(rng.choice(SINGLE_SIZES if n == 1 else PAIR_SIZES)) for _ in range(n)]
    speeds = [float(rng.uniform(*SPEED)) for _ in range(n)]
    positions = np.zeros((n, frames, 2))
    travel = frames - 1
    # the box each object's top-left corner may start in: (xlo, xhi, ylo, yhi) of its region
    if n == 1:
        regions = [(0.0, SIZE, 0.0, SIZE)]
    else:
        half = SIZE / 2
        first_left_or_top = clip.relation in ("left of", "above")
        a, b = ((0.0, half), (half, SIZE)) if first_left_or_top else ((half, SIZE), (0.0, half))
        if clip.relation in ("left of", "right of"):
            regions = [(a[0], a[1], 0.0, SIZE), (b[0], b[1], 0.0, SIZE)]
        else:
            regions = [(0.0, SIZE, a[0], a[1]), (0.0, SIZE, b[0], b[1])]
    for k, (o, size, speed) in enumerate(zip(clip.objects, sizes, speeds)):
        vx, vy = (speed * c for c in MOTIONS[o.motion])
        xlo, xhi, ylo, yhi = regions[k]
        # the start must keep the whole track inside the region
        x0_lo, x0_hi = xlo - min(0.0, vx * travel), xhi - size - max(0.0, vx * travel)
        y0_lo, y0_hi = ylo - min(0.0, vy * travel), yhi - size - max(0.0, vy * travel)
        x0, y0 = rng.uniform(x0_lo, max(x0_lo, x0_hi)), rng.uniform(y0_lo, max(y0_lo, y0_hi))
        t = np.arange(frames)
        positions[k, :, 0] = x0 + vx * t
        positions[k, :, 1] = y0 + vy * t
    return positions, sizes, speeds


def render_truth(truth: ClipTruth) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) float32 frames in [0, 1] of a ground truth."""
    frames = truth.positions.shape[1]
    video = np.full((frames, SIZE, SIZE, 3), truth.background, dtype=np.float32)
    for k, o in enumerate(truth.clip.objects):
        colour = np.array(PALETTE[o.colour], dtype=np.float32)
        for f in range(frames):
            x, y = truth.positions[k, f]
            cov = coverage(o.shape, x, y, truth.sizes[k])[..., None]
            video[f] = video[f] * (1 - cov) + colour * cov
    return video


def render(clips: list[Clip], rng: np.random.Generator, frames: int = FRAMES) -> tuple[np.ndarray, list[ClipTruth]]:
    """(N, frames, SIZE, SIZE, 3) float32 clips in [0, 1] and their ground truth."""
    if not (isinstance(frames, int) and frames >= 2):
        raise ClipError(f"frames must be an integer >= 2, got {frames!r}")
    truths, videos = [], []
    for clip in clips:
        positions, sizes, speeds = _layout(clip, rng, frames)
        truth = ClipTruth(clip, positions, tuple(sizes), tuple(speeds), float(rng.uniform(*BACKGROUND)))
        truths.append(truth)
        videos.append(render_truth(truth))
    return np.stack(videos), truths
