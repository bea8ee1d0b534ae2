"""Glyph scenes: the compositional text-to-image testbed, generated procedurally with ground truth.

A scene is one or two handwritten digit glyphs (scikit-learn's bundled 8x8 digits, no download),
each tinted with a colour from a small palette, on a 16x16 black RGB canvas, in a stated relation:

    "red three left of blue seven"    "green five above yellow two"    "purple eight"

Binding can fail in all the ways real text-to-image models fail: a wrong digit (object class), a
wrong colour, colours bound to the wrong object, or the wrong relation. Every attribute of every
render is known, so a judge can score each of them exactly.

Splits. Glyphs are split once (stratified, fixed seed) into a train pool (the generator learns from
it) and a held-out pool (the judge and the FD reference use it). A few (digit, colour) pairs never
appear in training captions (`HELDOUT_PAIRS`); caption sets flagged `unseen` test generalisation to
them. Slots: "left of"/"right of" put the two glyphs side by side (rows 4-11), "above"/"below" one
over the other (cols 4-11), a single glyph sits in the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..toy.data import DIGIT_WORDS

SIZE = 16
GLYPH = 8
# Saturated hues with two near pairs (red/orange, blue/purple), so colour binding is not trivial.
PALETTE = {
    "red": (0.95, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.95, 0.10),
    "green": (0.10, 0.85, 0.20),
    "blue": (0.15, 0.35, 1.00),
    "purple": (0.65, 0.20, 0.95),
}
COLOURS = tuple(PALETTE)
RELATIONS = ("left of", "right of", "above", "below")
# Layouts the judge reads: which axis the two slots lie on (or one centred glyph).
LAYOUTS = ("horizontal", "vertical", "single")
# (digit, colour index) pairs never used in training captions: every even digit with one colour.
HELDOUT_PAIRS = frozenset((d, (d // 2) % len(COLOURS)) for d in range(0, 10, 2))
SINGLE_FRACTION = 0.2  # of training captions
GLYPH_SPLIT_SEED = 0
HELDOUT_GLYPHS = 597  # of 1,797 (the rest, 1,200, is the train pool)

# Top-left corner of each slot: (layout, slot) -> (row, col); slot 0 is left / top / centre.
SLOTS = {
    ("horizontal", 0): (4, 0),
    ("horizontal", 1): (4, 8),
    ("vertical", 0): (0, 4),
    ("vertical", 1): (8, 4),
    ("single", 0): (4, 4),
}


class SceneError(ValueError):
    """A caption or scene the generator cannot draw; the message says what is allowed."""


def vocabulary() -> list[str]:
    """Every word a scene caption may use, in a fixed order (the prompt encoder's vocabulary)."""
    words = [*COLOURS, *DIGIT_WORDS]
    for rel in RELATIONS:
        words += [w for w in rel.split() if w not in words]
    return words


@dataclass(frozen=True)
class Scene:
    """Ground truth of one caption. objects: ((digit, colour index), ...) in caption order."""

    objects: tuple[tuple[int, int], ...]
    relation: str | None = None

    def __post_init__(self):
        if len(self.objects) not in (1, 2):
            raise SceneError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        for d, c in self.objects:
            if not (0 <= d <= 9):
                raise SceneError(f"digit {d} is out of range; allowed: 0..9")
            if not (0 <= c < len(COLOURS)):
                raise SceneError(
                    f"palette index {c} is out of range; allowed: 0..{len(COLOURS) - 1} ({', '.join(COLOURS)})"
                )
        if len(self.objects) == 2:
            if self.relation not in RELATIONS:
                raise SceneError(f"relation {self.relation!r} cannot be drawn; allowed: {', '.join(RELATIONS)}")
            if self.objects[0][1] == self.objects[1][1]:
                raise SceneError("the two objects of a scene need different colours (else the caption is ambiguous)")
        elif self.relation is not None:
            raise SceneError("a single-object scene has no relation")

    @property
    def layout(self) -> str:
        if self.relation is None:
            return "single"
        return "horizontal" if self.relation in ("left of", "right of") else "vertical"

    def slots(self) -> tuple[tuple[int, int], ...]:
        """The objects in slot order (left/top first): what an image of this caption shows."""
        if self.relation in ("right of", "below"):
            return self.objects[::-1]
        return self.objects

    @property
    def unseen(self) -> bool:
        return any(o in HELDOUT_PAIRS for o in self.objects)

    def caption(self) -> str:
        words = [f"{COLOURS[c]} {DIGIT_WORDS[d]}" for d, c in self.objects]
        return words[0] if len(words) == 1 else f"{words[0]} {self.relation} {words[1]}"


def parse_caption(caption: str) -> Scene:
    """The scene a caption describes; a clear error for words or structures the generator cannot draw."""
    words = caption.lower().split()
    known = set(vocabulary())
    unknown = [w for w in words if w not in known]
    if unknown:
        raise SceneError(
            f"caption {caption!r} has words outside the vocabulary: {unknown}; vocabulary: {' '.join(vocabulary())}"
        )

    def obj(pair: list[str]) -> tuple[int, int]:
        if len(pair) != 2 or pair[0] not in PALETTE or pair[1] not in DIGIT_WORDS:
            raise SceneError(
                f"caption {caption!r}: an object is '<colour> <digit>' (colours: {', '.join(COLOURS)}), got {' '.join(pair)!r}"
            )
        return DIGIT_WORDS.index(pair[1]), COLOURS.index(pair[0])

    if len(words) == 2:
        return Scene((obj(words),))
    for rel in RELATIONS:
        n = len(rel.split())
        if len(words) == 4 + n and " ".join(words[2 : 2 + n]) == rel:
            return Scene((obj(words[:2]), obj(words[2 + n :])), rel)
    raise SceneError(
        f"caption {caption!r} is not '<colour> <digit>' or '<colour> <digit> <relation> <colour> <digit>' "
        f"(relations: {', '.join(RELATIONS)})"
    )


def glyph_pool(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(glyphs (N, 8, 8) in [0, 1], labels (N,)) of the "train" or "heldout" pool; fixed, stratified."""
    if name not in ("train", "heldout"):
        raise SceneError(f"glyph pool must be 'train' or 'heldout', got {name!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    a, b = train_test_split(
        np.arange(len(labels)), test_size=HELDOUT_GLYPHS, random_state=GLYPH_SPLIT_SEED, stratify=labels
    )
    idx = np.sort(a if name == "train" else b)
    return (digits.images[idx] / 16.0).astype(np.float32), labels[idx]


def sample_scenes(
    count: int, rng: np.random.Generator, *, single_fraction: float = SINGLE_FRACTION, pairs: str = "seen"
) -> list[Scene]:
    """Random scenes. pairs: "seen" (no held-out pair, the training distribution), "unseen" (two
    objects, at least one held-out pair) or "all"."""
    if pairs not in ("seen", "unseen", "all"):
        raise SceneError(f"pairs must be 'seen', 'unseen' or 'all', got {pairs!r}")
    out: list[Scene] = []
    while len(out) < count:
        single = pairs != "unseen" and rng.random() < single_fraction
        d = rng.integers(0, 10, size=2)
        c = rng.choice(len(COLOURS), size=2, replace=False)
        objects = ((int(d[0]), int(c[0])),) if single else ((int(d[0]), int(c[0])), (int(d[1]), int(c[1])))
        scene = Scene(objects, None if single else RELATIONS[int(rng.integers(len(RELATIONS)))])
        if (pairs == "seen" and scene.unseen) or (pairs == "unseen" and not scene.unseen):
            continue
        out.append(scene)
    return out


def render(scenes: list[Scene], glyphs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 16, 16, 3) float32 images in [0, 1]: each object a random glyph of its digit from the pool."""
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
    images = np.zeros((len(scenes), SIZE, SIZE, 3), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for slot, (d, c) in enumerate(scene.slots()):
            r, col = SLOTS[(scene.layout, slot)]
            glyph = glyphs[by_digit[d][rng.integers(len(by_digit[d]))]]
            images[i, r : r + GLYPH, col : col + GLYPH] = glyph[..., None] * palette[c]
    return images


def caption_set(split: str, count: int) -> list[Scene]:
    """Fixed evaluation captions. split: "dev" (tuning) or "test" (reporting), seen pairs only, two
    objects; "unseen": two objects with a held-out pair. Disjoint seeds, so dev and test differ."""
    seeds = {"dev": 101, "test": 202, "unseen": 303}
    if split not in seeds:
        raise SceneError(f"caption split must be one of {', '.join(seeds)}, got {split!r}")
    rng = np.random.default_rng(seeds[split])
    return sample_scenes(count, rng, single_fraction=0.0, pairs="unseen" if split == "unseen" else "seen")


def ideal_x0(x_t: np.ndarray, t: float, batch: list[Scene], pool: str = "train") -> np.ndarray:
    """The ideal (posterior-mean) clean image E[x0 | x_t, caption] of the training distribution, exactly.

    Rectified flow: x_t = (1 - t) x0 + t eps, images in model range [-1, 1], shape (N, 16, 16, 3).
    Given a caption, the training renders are uniform over the pool's glyphs of each object's digit,
    drawn independently per slot; slots are disjoint and every other pixel is background (-1). So the
    posterior factorises over slots: each slot is a softmax-weighted mean of its candidate glyphs,
    weights exp(-|x_t,slot - (1 - t) y_j|^2 / 2t^2), over *every* candidate (no sampling: ~120 glyphs
    per digit in the train pool), and the background is exactly -1. This is the closed form of
    Karras et al.'s ideal denoiser over the whole training distribution, not over a sample of it.
    """
    if not 0 < t <= 1:
        raise SceneError(f"t must be in (0, 1], got {t!r}")
    glyphs, labels = glyph_pool(pool)
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)
    out = np.full(x_t.shape, -1.0, dtype=np.float64)
    for i, scene in enumerate(batch):
        for slot, (d, c) in enumerate(scene.slots()):
            r, col = SLOTS[(scene.layout, slot)]
            cand = 2.0 * glyphs[labels == d].astype(np.float64)[..., None] * palette[c] - 1.0  # (J, 8, 8, 3)
            patch = x_t[i, r : r + GLYPH, col : col + GLYPH].astype(np.float64)
            logits = -((patch[None] - (1 - t) * cand) ** 2).sum(axis=(1, 2, 3)) / (2 * t * t)
            w = np.exp(logits - logits.max())
            out[i, r : r + GLYPH, col : col + GLYPH] = np.tensordot(w / w.sum(), cand, axes=1)
    return out
