"""What the guidance design (`testbeds.design`) renders and scores on each testbed.

The search, the selection rule and the test comparison are the same on every testbed; what differs
is the captions, where the samples are kept, the judge and which metrics exist:

- `ScenesScoring` (T2I glyph scenes): FD in the judge's features against held-out renders (lower is
  better) with its real-vs-real floor, all-correct rate, per-attribute accuracy, precision/recall.
  Samples go through `generate` (resumable PNG folders under `runs/`, forked workers allowed).
- `ClipsScoring` (T2V moving shapes): the VBench-shaped Total, Quality, Semantic and their
  dimensions from the exact judges of `metrics.clips` (higher is better), with real renders as the
  ceiling. Clips are kept as uint8 chunks under `runs/` (an mp4 would halve a 12 px frame's colour),
  rendered by `clip_store.render_chunks` (forked workers allowed).

`scoring_for(profile, ...)` picks the right one. Both give a `floor` (the metrics of real renders,
scored the same way) and `keys` (metrics a selection rule may name).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy.linalg import LinAlgWarning

from ..profiles import ConfigError


class ScenesScoring:
    keys = ("fd", "all", "digit", "colour", "relation", "precision", "recall")
    extra = ("all_unseen",)
    lower_is_better = frozenset({"fd"})
    changes = ("fd", "all", "digit", "precision", "recall")  # reported as paired changes on test
    labels = {"fd": "FD", "all": "all-correct", "digit": "digit", "precision": "precision", "recall": "recall"}

    def __init__(self, judge_path: str):
        from ..metrics.scenes import load_judge

        self.judge = load_judge(judge_path)

    def captions(self, split: str, count: int) -> list[str]:
        from . import scenes

        return [s.caption() for s in scenes.caption_set(split, count)]

    def prepare(self, captions: list[str], seed_sets: int) -> dict:
        """The reference features (held-out glyphs) for FD, and the floor: real renders' metrics."""
        from .evaluate import reference_and_floor

        self.reference, floor = reference_and_floor(self.judge, captions, seed_sets)
        return floor

    def twin_pipeline(self, pipe, twin, scale: float):
        from .twins import twin_pipeline

        return twin_pipeline(pipe, twin, scale)

    def render(self, scorer, m, renderer, seed_set: int) -> np.ndarray:
        from ..evaluation import run_dir
        from ..generate import generate
        from ..metrics import Samples

        captions = scorer.captions
        out = run_dir(
            scorer.runs_dir, scorer.prof, "design", m.name.replace("/", "_"), renderer, captions, samples_per_prompt=1
        )
        generate(
            renderer,
            captions,
            out,
            batch_size=scorer.batch_size,
            base_seed=renderer.base_seed,
            progress=False,
            workers=scorer.workers,
        )
        samples = Samples.from_dir(out, len(captions))
        return np.stack([samples.image(i) for i in range(len(captions))])

    def score(self, images: np.ndarray, captions: list[str]) -> dict:
        from ..metrics.scenes import read, scene_metrics

        with warnings.catch_warnings():
            # Dead ReLU units of the judge make sample covariances singular; sqrtm still converges
            # (the floor is computed the same way) and SciPy's warning would repeat per set.
            warnings.simplefilter("ignore", category=LinAlgWarning)
            return scene_metrics(read(self.judge, images), captions, self.reference)

    def sample_figure(self, images: dict, order: list[str], captions: list[str]):
        from .plots import sample_grid

        return sample_grid(images, order, captions)


class ClipsScoring:
    keys = (
        "total",
        "quality",
        "semantic",
        "shown_and_moving",
        "all_correct",
        "object_class",
        "multiple_objects",
        "color",
        "spatial_relationship",
        "motion",
        "subject_consistency",
        "background_consistency",
        "temporal_flickering",
        "motion_smoothness",
        "dynamic_degree",
        "imaging_quality",
    )
    extra = ()
    lower_is_better = frozenset()
    changes = ("total", "semantic", "quality", "shown_and_moving", "motion")
    labels = {
        "total": "Total",
        "semantic": "Semantic",
        "quality": "Quality",
        "shown_and_moving": "shown+moving",
        "motion": "motion",
    }

    def captions(self, split: str, count: int) -> list[str]:
        from . import clips

        return [c.caption() for c in clips.caption_set(split, count)]

    def prepare(self, captions: list[str], seed_sets: int) -> dict:
        """The ceiling: real renders of the captions, one block per seed set, scored like samples."""
        from .evaluate_t2v import references

        real, _, _ = references(captions, seed_sets)
        return {k: real[k] for k in self.keys}

    def twin_pipeline(self, pipe, twin, scale: float):
        from .evaluate_t2v import twin_pipeline

        return twin_pipeline(pipe, twin, scale)

    def render(self, scorer, m, renderer, seed_set: int) -> np.ndarray:
        from ..generate_pool import worker_batches
        from .clip_store import render_chunks

        out = Path(scorer.runs_dir) / scorer.profile / "design" / scorer.split / m.name.replace("/", "_")
        # A seed set is smaller than a batch: with workers, cut it into one chunk per worker (the clips
        # do not depend on the chunk size, tests/test_generate_pool.py), as `generate` does for scenes.
        chunk = worker_batches(len(scorer.captions), scorer.batch_size, scorer.workers)
        return render_chunks(renderer, scorer.captions, out / f"set{seed_set}", chunk, None, workers=scorer.workers)

    def score(self, videos: np.ndarray, captions: list[str]) -> dict:
        from ..metrics import clips as M

        return M.aggregate(M.score_clips(videos, captions))

    def sample_figure(self, videos: dict, order: list[str], captions: list[str]):
        from .plots_t2v import sample_strip

        return sample_strip(videos, order, captions)


def scoring_for(prof, judge_path: str | None = None):
    """The scoring of a testbed profile (`scenes`-like image toys need their judge)."""
    if prof.family == "toy" and prof.kind == "video":
        return ClipsScoring()
    if prof.family == "toy" and prof.kind == "image" and judge_path is not None:
        return ScenesScoring(judge_path)
    raise ConfigError(
        f"profile={prof.name!r} is not allowed for the guidance design; allowed: a testbed profile (scenes with "
        "its judge_path, or clips)"
    )


def trained_twins(prof) -> dict[str, str]:
    """The trained weak twins saved next to a testbed's model (`twin_*` pipeline folders)."""
    parent = Path(prof.model).parent
    return {p.name: str(p) for p in sorted(parent.glob("twin_*")) if (p / "model_index.json").is_file()}


def testbed_judge(prof) -> str | None:
    """The judge saved next to an image testbed's model (`judge.safetensors`); None where there is
    none (the clips are judged exactly, with no trained judge)."""
    path = Path(prof.model).parent / "judge.safetensors"
    return str(path) if path.is_file() else None
