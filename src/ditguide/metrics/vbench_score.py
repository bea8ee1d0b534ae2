"""VBench Quality / Semantic / Total from per-dimension scores, and the metric that produces them.

VBench 0.1.5 pins transformers==4.33.2, timm<=1.0.12 and numpy<2, so it runs in its own
environment (`scripts/setup_vbench_env.sh`). `run_vbench` starts `vbench_run.py` there (one JSON
per dimension, resumable); everything else here is plain arithmetic in our environment.

Scoring follows VBench's `scripts/cal_final_score.py` and `scripts/constant.py`:
    n_d      = (raw_d - Min_d) / (Max_d - Min_d) * weight_d      (weight 0.5 for dynamic degree, else 1)
    Quality  = sum of n_d over the 7 quality dimensions / sum of their weights (6.5)
    Semantic = sum of n_d over the 9 semantic dimensions / 9
    Total    = (4 * Quality + 1 * Semantic) / 5
One difference on purpose: VBench's script scores a missing dimension as 0; here a missing
dimension is an error naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import MetricResult, Samples

# VBench's protocol: five videos per prompt, `{prompt}-0.mp4` .. `{prompt}-4.mp4`; VBench looks up
# these five only (vbench/__init__.py), so more would be ignored. The one definition in the package.
VIDEOS_PER_PROMPT = 5

# VBench's 16 dimensions, in the order of VBench.build_full_dimension_list().
DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "color",
    "spatial_relationship",
    "scene",
    "temporal_style",
    "overall_consistency",
    "human_action",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "appearance_style",
)
QUALITY_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_DIMENSIONS = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
# (Min, Max) of each dimension's raw score, from VBench's scripts/constant.py (NORMALIZE_DIC).
NORMALIZATION = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
WEIGHTS = {d: (0.5 if d == "dynamic_degree" else 1.0) for d in DIMENSIONS}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
MODES = ("vbench_standard", "custom_input")
DEVICES = ("cuda", "cpu")

VBENCH_RUN_SCRIPT = Path(__file__).with_name("vbench_run.py")
# src/ditguide/metrics/vbench_score.py -> the repository root (editable install)
REPO_ROOT = Path(__file__).resolve().parents[3]


class VBenchEnvironmentError(RuntimeError):
    """The separate VBench environment is missing or failed; the message says how to fix it."""


def check_known(dimensions) -> None:
    unknown = sorted(set(dimensions) - set(DIMENSIONS))
    if unknown:
        raise ValueError(f"unknown VBench dimensions {unknown}; allowed: {', '.join(DIMENSIONS)}")


def normalized_scores(raw: Mapping[str, float]) -> dict[str, float]:
    """Weighted normalized score n_d of each dimension present in `raw`."""
    check_known(raw)
    out = {}
    for d, x in raw.items():
        lo, hi = NORMALIZATION[d]
        out[d] = (float(x) - lo) / (hi - lo) * WEIGHTS[d]
    return out


def _require(raw: Mapping[str, float], needed: Sequence[str], what: str) -> None:
    missing = [d for d in needed if d not in raw]
    if missing:
        raise ValueError(f"{what} needs all of {len(needed)} dimensions; missing: {', '.join(missing)}")


def quality_score(raw: Mapping[str, float]) -> float:
    """VBench Quality Score as a fraction (0..1 for raw scores inside Min..Max)."""
    _require(raw, QUALITY_DIMENSIONS, "the Quality Score")
    n = normalized_scores({d: raw[d] for d in QUALITY_DIMENSIONS})
    return sum(n.values()) / sum(WEIGHTS[d] for d in QUALITY_DIMENSIONS)


def semantic_score(raw: Mapping[str, float]) -> float:
    """VBench Semantic Score as a fraction."""
    _require(raw, SEMANTIC_DIMENSIONS, "the Semantic Score")
    n = normalized_scores({d: raw[d] for d in SEMANTIC_DIMENSIONS})
    return sum(n.values()) / sum(WEIGHTS[d] for d in SEMANTIC_DIMENSIONS)


def total_from_parts(quality: float, semantic: float) -> float:
    return (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)


def total_score(raw: Mapping[str, float]) -> float:
    """VBench Total Score as a fraction (the leaderboard shows it in percent)."""
    _require(raw, DIMENSIONS, "the Total Score")
    return total_from_parts(quality_score(raw), semantic_score(raw))


@dataclass(frozen=True)
class VBenchScores:
    total: float  # percent, as on VBench's leaderboard
    quality: float
    semantic: float
    raw: dict = field(default_factory=dict)  # per-dimension raw scores (fractions)
    normalized: dict = field(default_factory=dict)  # per-dimension weighted normalized scores


def vbench_scores(raw: Mapping[str, float]) -> VBenchScores:
    q, s = quality_score(raw), semantic_score(raw)
    _require(raw, DIMENSIONS, "the Total Score")
    return VBenchScores(
        total=100 * total_from_parts(q, s),
        quality=100 * q,
        semantic=100 * s,
        raw={d: float(raw[d]) for d in DIMENSIONS},
        normalized=normalized_scores({d: raw[d] for d in DIMENSIONS}),
    )


def load_raw_scores(results_dir: str | os.PathLike, dimensions: Sequence[str] = DIMENSIONS) -> dict[str, float]:
    """{dimension: raw score} from the `<dimension>.json` files that vbench_run.py writes."""
    check_known(dimensions)
    results_dir = Path(results_dir)
    missing = [d for d in dimensions if not (results_dir / f"{d}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no VBench results for {', '.join(missing)} in {results_dir}: run run_vbench (vbench_run.py) for them"
        )
    out = {}
    for d in dimensions:
        record = json.loads((results_dir / f"{d}.json").read_text())
        if record.get("dimension") != d:
            raise ValueError(f"{results_dir / f'{d}.json'} holds dimension {record.get('dimension')!r}, not {d!r}")
        out[d] = float(record["score"])
    return out


def raw_scores_from_eval_results(path: str | os.PathLike) -> dict[str, float]:
    """{dimension: raw score} from a file VBench itself writes (`<name>_eval_results.json`)."""
    data = json.loads(Path(path).read_text())
    check_known(data)
    return {d: float(v[0]) for d, v in data.items()}


# ----------------------------------------------------------------------------------------------
# running VBench in its own environment


def default_vbench_python() -> Path:
    """$DITGUIDE_VBENCH_PYTHON, else $DITGUIDE_VBENCH_VENV/bin/python, else <repo>/.venv-vbench/bin/python
    (the same defaults as scripts/setup_vbench_env.sh)."""
    if os.environ.get("DITGUIDE_VBENCH_PYTHON"):
        return Path(os.environ["DITGUIDE_VBENCH_PYTHON"])
    venv = Path(os.environ.get("DITGUIDE_VBENCH_VENV") or REPO_ROOT / ".venv-vbench")
    return venv / "bin" / "python"


def check_vbench_python(python: str | os.PathLike | None = None) -> Path:
    python = Path(python) if python is not None else default_vbench_python()
    if not python.is_file():
        raise VBenchEnvironmentError(
            f"VBench environment not found (no interpreter at {python}). Create it with "
            "`bash scripts/setup_vbench_env.sh` (or point DITGUIDE_VBENCH_PYTHON at an interpreter that has vbench 0.1.5)."
        )
    return python


def standard_prompt_suite(python: str | os.PathLike | None = None) -> Path:
    """VBench's own VBench_full_info.json (946 entries, 944 distinct prompts) inside the VBench env.

    Generate from it with `python -m ditguide.generate --prompts <this path>`: `read_prompts`
    keeps each distinct prompt once, giving VBench's 5 videos per prompt.
    """
    python = check_vbench_python(python)
    suites = sorted(python.parent.parent.glob("lib/python3*/site-packages/vbench/VBench_full_info.json"))
    if not suites:
        raise VBenchEnvironmentError(
            f"vbench is not installed in {python.parent.parent}: rerun `bash scripts/setup_vbench_env.sh`"
        )
    return suites[0]


def run_vbench(
    videos_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    dimensions: Sequence[str] = DIMENSIONS,
    python: str | os.PathLike | None = None,
    device: str = "cuda",
    mode: str = "vbench_standard",
    full_info: str | os.PathLike | None = None,
    prompt_file: str | os.PathLike | None = None,
    videos_per_prompt: int = VIDEOS_PER_PROMPT,
    nproc: int = 1,
    timeout: float | None = None,
) -> dict[str, float]:
    """Evaluate `dimensions` on a folder of videos in the VBench environment; returns raw scores.

    Dimensions already in `results_dir` are not recomputed: use one results folder per generation
    folder. `nproc > 1` runs VBench's own distributed evaluation with torchrun on that many GPUs.
    """
    check_known(dimensions)
    if not dimensions:
        raise ValueError("dimensions is empty")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not allowed; allowed: {', '.join(DEVICES)}")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not Path(videos_dir).is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} not found")
    if all((Path(results_dir) / f"{d}.json").is_file() for d in dimensions):
        return load_raw_scores(results_dir, dimensions)  # finished earlier: no need to start the VBench env
    python = check_vbench_python(python)
    cmd = _command(python, nproc, videos_dir, results_dir, device, mode, videos_per_prompt, dimensions)
    if full_info is not None:
        cmd += ["--full-info", str(full_info)]
    if prompt_file is not None:
        cmd += ["--prompt-file", str(prompt_file)]
    # The VBench env must not see our environment's packages (PYTHONPATH from a notebook, say).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise VBenchEnvironmentError(f"vbench_run.py failed (exit {proc.returncode}):\n{tail}")
    return load_raw_scores(results_dir, dimensions)


def _command(python: Path, nproc: int, videos_dir, results_dir, device, mode, videos_per_prompt, dimensions) -> list:
    """vbench_run.py's command line (under torchrun when `nproc > 1`), without the optional files."""
    launcher = (
        [str(python)] if nproc == 1 else [str(python), "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    )
    return launcher + [
        str(VBENCH_RUN_SCRIPT),
        "--videos",
        str(videos_dir),
        "--out",
        str(results_dir),
        "--device",
        device,
        "--mode",
        mode,
        "--videos-per-prompt",
        str(videos_per_prompt),
        "--dimensions",
        *dimensions,
    ]


class VBench:
    """VBench Total Score (percent) of a video generation folder; Quality, Semantic and every
    dimension in the details. Generate with `ditguide.generate` on VBench's standard prompt suite
    (5 videos per prompt)."""

    name = "vbench_total"
    higher_is_better = True

    def __init__(
        self,
        results_dir: str | os.PathLike,
        *,
        python: str | os.PathLike | None = None,
        device: str = "cuda",
        nproc: int = 1,
        full_info: str | os.PathLike | None = None,
    ):
        if device not in DEVICES:
            raise ValueError(f"device={device!r} is not allowed; allowed: {', '.join(DEVICES)}")
        self.results_dir, self.python, self.device, self.nproc, self.full_info = (
            Path(results_dir),
            python,
            device,
            nproc,
            full_info,
        )

    def __call__(self, samples: Samples) -> MetricResult:
        if samples.kind != "video" or samples.root is None:
            raise ValueError("VBench judges a folder of videos: pass Samples.from_dir(<generation folder>)")
        raw = run_vbench(
            samples.root,
            self.results_dir,
            python=self.python,
            device=self.device,
            nproc=self.nproc,
            full_info=self.full_info,
        )
        scores = vbench_scores(raw)
        details = {
            "quality": scores.quality,
            "semantic": scores.semantic,
            "raw": scores.raw,
            "normalized": scores.normalized,
            "library": "vbench 0.1.5, standard prompt suite, mode vbench_standard",
            "results_dir": str(self.results_dir),
        }
        return MetricResult(self.name, scores.total, self.higher_is_better, len(samples), details)
