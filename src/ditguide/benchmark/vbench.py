"""VBench (text to video): per-dimension scores, and Quality / Semantic / Total when all 16 are run.

VBench runs in its own environment (`scripts/setup_vbench_env.sh`, `metrics.vbench_score`). Videos are
named as VBench's standard mode looks them up (`{prompt}-{i}.mp4`, i < 5), so a caption's id is its
prompt; its meta holds the dimensions it was picked for. Only the prompts of the chosen dimensions
are rendered; `limit` takes the first `limit` prompts of each dimension (a stated subset).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..metrics.vbench_score import VIDEOS_PER_PROMPT
from ..profiles import Profile
from ..style import latex_table
from ..versions import package_versions
from .base import Benchmark, Caption, check_option, guidance_label, is_int, tex

LIBRARIES = ("ditguide", "torch", "diffusers", "transformers")


def read_suite(path: str | os.PathLike) -> list[dict]:
    """A VBench prompt suite: records {"prompt_en": str, "dimension": [str, ...]} (VBench_full_info.json's format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt suite {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"prompt suite {path} is not JSON ({e})") from e
    ok = (
        isinstance(data, list)
        and data
        and all(
            isinstance(r, dict) and isinstance(r.get("prompt_en"), str) and isinstance(r.get("dimension"), list)
            for r in data
        )
    )
    if not ok:
        raise ValueError(
            f"prompt suite {path} must be a non-empty list of records {{'prompt_en': str, 'dimension': [...]}} "
            "(VBench_full_info.json's format; VBench's standard mode finds videos by these prompts)"
        )
    return data


def suite_subset(suite: Sequence[dict], dimensions: Sequence[str], limit: int | None = None) -> list[dict]:
    """The records VBench evaluates `dimensions` on: per dimension its prompts in suite order (the first
    `limit` of them if given), one record per distinct prompt, listing only the dimensions it was picked for."""
    picked: dict[str, list[str]] = {}
    for dim in dimensions:
        prompts = list(dict.fromkeys(r["prompt_en"] for r in suite if dim in r["dimension"]))
        if not prompts:
            raise ValueError(f"the prompt suite has no prompts for dimension {dim!r}")
        for p in prompts[:limit]:
            picked.setdefault(p, []).append(dim)
    order = list(dict.fromkeys(r["prompt_en"] for r in suite))
    return [{"prompt_en": p, "dimension": picked[p]} for p in order if p in picked]


def vbench_summary(raw: dict[str, float]) -> dict:
    """Per-dimension raw (percent) and weighted normalized scores; Quality, Semantic and Total (percent)
    when every dimension they need was evaluated, else None."""
    from ..metrics import vbench_score as vb

    normalized = vb.normalized_scores(raw)
    quality = 100 * vb.quality_score(raw) if set(vb.QUALITY_DIMENSIONS) <= set(raw) else None
    semantic = 100 * vb.semantic_score(raw) if set(vb.SEMANTIC_DIMENSIONS) <= set(raw) else None
    total = None if quality is None or semantic is None else 100 * vb.total_from_parts(quality / 100, semantic / 100)
    return {
        "total": total,
        "quality": quality,
        "semantic": semantic,
        "raw": {d: 100 * float(v) for d, v in raw.items()},
        "normalized": normalized,
    }


def check_vbench_dimensions(python: Path, dimensions: Sequence[str], timeout: float | None = None) -> None:
    """In the VBench env: the dimensions import (four need detectron2) and their weights are in
    $VBENCH_CACHE_DIR (fetched there when online). vbench_run.py --prefetch does both checks."""
    import subprocess

    from ..metrics.vbench_score import VBENCH_RUN_SCRIPT, VBenchEnvironmentError

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), str(VBENCH_RUN_SCRIPT), "--prefetch", "--dimensions", *dimensions],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise VBenchEnvironmentError(f"the VBench environment cannot evaluate {', '.join(dimensions)}:\n{tail}")


class VBench(Benchmark):
    """prompts: "standard" (VBench's VBench_full_info.json) or a suite file in its format; dimensions:
    None for all 16 (then Quality, Semantic and Total); limit: prompts per dimension; samples_per_prompt:
    seeds per prompt (VBench: 5); vbench_python: the VBench environment's python; vbench_device: where
    VBench runs (default cuda if available); vbench_nproc > 1: VBench's own multi-GPU run."""

    name = "vbench"
    kind = "video"
    task = "t2v"

    def __init__(
        self,
        prompts: str | os.PathLike = "standard",
        samples_per_prompt: int = 5,
        limit: int | None = None,
        dimensions: Sequence[str] | None = None,
        vbench_python: str | os.PathLike | None = None,
        vbench_device: str | None = None,
        vbench_nproc: int = 1,
        timeout: float | None = None,
    ):
        from ..metrics import vbench_score as vb

        if not (is_int(samples_per_prompt, 1) and samples_per_prompt <= VIDEOS_PER_PROMPT):
            raise ValueError(
                f"samples_per_prompt must be an integer in 1..{VIDEOS_PER_PROMPT} "
                f"(VBench reads videos -0 to -4 of each prompt), got {samples_per_prompt!r}"
            )
        check_option(
            limit is None or is_int(limit, 1), "limit", limit, "an integer >= 1 (prompts per dimension) or None"
        )
        dims = list(vb.DIMENSIONS) if dimensions is None else list(dict.fromkeys(dimensions))
        if not dims:
            raise ValueError("dimensions is empty (None means all 16)")
        vb.check_known(dims)
        self.prompts, self.samples_per_prompt, self.limit, self.dimensions = prompts, samples_per_prompt, limit, dims
        self.vbench_python, self.vbench_device, self.vbench_nproc, self.timeout = (
            vbench_python,
            vbench_device,
            vbench_nproc,
            timeout,
        )
        self._python = self._suite_path = None
        self._subset: list[dict] = []
        self._records: dict = {}

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        if profile.kind != "video":
            return f"VBench needs a video profile; {profile.name!r} makes {profile.kind}s (see coco)"
        if profile.family == "toy":
            return (
                "it evaluates real text-to-video models; the T2V testbed has its own benchmark with exact "
                "judges (clips)"
            )
        return None

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        from ..metrics import vbench_score as vb

        self._python = vb.check_vbench_python(self.vbench_python)
        standard = str(self.prompts) == "standard"
        self._suite_path = vb.standard_prompt_suite(self._python) if standard else Path(self.prompts)
        self._subset = suite_subset(read_suite(self._suite_path), self.dimensions, self.limit)
        if self.vbench_device is None:
            import torch

            self.vbench_device = "cuda" if torch.cuda.is_available() else "cpu"
        if main_process:
            check_vbench_dimensions(self._python, self.dimensions, self.timeout)  # before sampling: detectron2, weights

    def captions(self) -> list[Caption]:
        return [Caption(r["prompt_en"], r["prompt_en"], {"dimension": r["dimension"]}) for r in self._subset]

    def score(self, samples) -> dict:
        from ..metrics import vbench_score as vb

        folder = samples.root.parent
        subset_json = json.dumps(self._subset, indent=1, ensure_ascii=False)
        # One results folder per (videos, evaluated prompt subset): VBench skips finished dimensions.
        results = folder / f"vbench-{hashlib.sha256(subset_json.encode()).hexdigest()[:10]}"
        results.mkdir(parents=True, exist_ok=True)
        (results / "full_info.json").write_text(subset_json, encoding="utf-8")
        raw = vb.run_vbench(
            samples.root,
            results,
            dimensions=self.dimensions,
            python=self._python,
            device=self.vbench_device,
            mode="vbench_standard",
            full_info=results / "full_info.json",
            videos_per_prompt=self.samples_per_prompt,
            nproc=self.vbench_nproc,
            timeout=self.timeout,
        )
        self._records = {d: json.loads((results / f"{d}.json").read_text()) for d in self.dimensions}
        return {
            **vbench_summary(raw),
            "n_videos": {d: self._records[d]["n_videos"] for d in self.dimensions},
            "run_dir": str(folder),
            "results_dir": str(results),
        }

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        first = next(iter(self._records.values()))
        standard = str(self.prompts) == "standard"
        n_prompts = len(self._subset)
        protocol = {
            "suite": str(self._suite_path),
            "suite_name": "VBench's standard prompt suite"
            if standard
            else f"the prompt suite {Path(self.prompts).name}",
            "dimensions": self.dimensions,
            "limit_per_dimension": self.limit,
            "n_prompts": n_prompts,
            "samples_per_prompt": self.samples_per_prompt,
            "n_videos": n_prompts * self.samples_per_prompt,
            "mode": first["mode"],
            "vbench": f"vbench {first['vbench_version']}",
            "vbench_device": self.vbench_device,
            "scoring": "VBench scripts/cal_final_score.py: n = (x - Min)/(Max - Min) * weight; Quality = sum n / 6.5 "
            "over 7 dims, Semantic = sum n / 9 over 9 dims, Total = (4 Quality + Semantic) / 5",
            "generation": {
                "model": profile.model,
                "dtype": profile.dtype,
                "steps": profile.steps,
                "height": profile.height,
                "width": profile.width,
                "num_frames": profile.num_frames,
                "fps": profile.fps or 16,
                "flow_shift": profile.flow_shift,
                "cfg_scale": profile.cfg_scale,
                "base_seed": base_seed,
                "negative_prompt": profile.negative_prompt,
                "prompt_extension": profile.prompt_extension,
            },
            "libraries": package_versions(LIBRARIES),
        }
        return {"task": "t2v", "protocol": protocol}

    def summary(self, name: str, m: dict) -> str:
        total = "-" if m["total"] is None else f"{m['total']:.2f}"
        dims = "  ".join(f"{d} {v:.2f}" for d, v in m["raw"].items())
        return f"{name:>12}: Total {total}  NFE/step {m['nfe_per_step']:g}  {dims}"

    @staticmethod
    def _caption(metrics: dict) -> str:
        p = metrics["protocol"]
        g = p["generation"]
        dims = (
            "all 16 dimensions"
            if len(p["dimensions"]) == 16
            else "dimensions " + ", ".join(d.replace("_", " ") for d in p["dimensions"])
        )
        subset = "" if p["limit_per_dimension"] is None else f", first {p['limit_per_dimension']} prompts per dimension"
        return (
            f"{tex(metrics['profile'])}: VBench ({p['vbench']}, mode {tex(p['mode'])}, {dims}) on {tex(p['suite_name'])}"
            f"{subset}: {p['n_prompts']} prompts x {p['samples_per_prompt']} seeds, {g['num_frames']} frames "
            f"{g['height']}x{g['width']} at {g['fps']} fps, {g['steps']} steps, prompt extension "
            f"{'on' if g['prompt_extension'] else 'off'}. Scores in percent (higher is better); "
            "NFE/step: transformer forwards per step."
        )

    def table(self, metrics: dict) -> str:
        """Methods x (NFE/step, Total, Quality, Semantic where complete, and the dimensions when not all 16)."""
        methods = metrics["methods"]
        dims = metrics["protocol"]["dimensions"]
        aggregates = [k for k in ("total", "quality", "semantic") if all(m[k] is not None for m in methods.values())]
        shown = [] if len(dims) == 16 else list(dims)
        rows = [
            (name, guidance_label(m), m["nfe_per_step"], *(m[k] for k in aggregates), *(m["raw"][d] for d in shown))
            for name, m in methods.items()
        ]
        columns = [
            "method",
            "guidance",
            "NFE/step",
            *(k.capitalize() for k in aggregates),
            *(d.replace("_", " ") for d in shown),
        ]
        return latex_table(
            rows,
            columns,
            caption=self._caption(metrics),
            label=f"tab:t2v_{metrics['profile']}",
            bold_best={i: "max" for i in range(3, len(columns))},
        )

    def dimensions_table(self, metrics: dict) -> str:
        """Dimensions x methods: raw VBench score (percent) of every evaluated dimension."""
        methods = metrics["methods"]
        rows = [
            (d.replace("_", " "), *(m["raw"][d] for m in methods.values())) for d in metrics["protocol"]["dimensions"]
        ]
        return latex_table(
            rows,
            ["dimension", *methods],
            caption=self._caption(metrics),
            label=f"tab:t2v_{metrics['profile']}_dimensions",
        )

    def tables(self, metrics: dict) -> dict[str, str]:
        return {"": self.table(metrics), "_dimensions": self.dimensions_table(metrics)}

    def tradeoff_figure(self, metrics: dict):
        """Raw score of every evaluated dimension, one marker per method: where a method buys one dimension
        with another (a dot plot: methods differ by fractions of a point on a 0-100 scale, which bars hide)."""
        import matplotlib.pyplot as plt

        from .. import style

        dims = metrics["protocol"]["dimensions"]
        methods = metrics["methods"]
        fig, ax = plt.subplots(figsize=(style.FULL if len(dims) > 4 else style.COLUMN, 2.4))
        offsets = np.linspace(-0.2, 0.2, len(methods)) if len(methods) > 1 else [0.0]
        for off, (name, m) in zip(offsets, methods.items()):
            x = np.arange(len(dims)) + off
            ax.scatter(x, [m["raw"][d] for d in dims], s=14, label=name, color=style.color(name))
        many = len(dims) > 1
        labels = [d.replace("_", " ") for d in dims]
        ax.set_xticks(np.arange(len(dims)), labels, rotation=30 if many else 0, ha="right" if many else "center")
        ax.set_xlim(-0.6, len(dims) - 0.4)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel("VBench score (%) ↑")
        ax.legend(frameon=False, fontsize=6)
        return fig

    def sample_grid(
        self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, frames: int = 4
    ):
        """First video (prompt 0, seed 0) of each method: `frames` evenly spaced frames per row."""
        import imageio_ffmpeg
        import matplotlib.pyplot as plt

        from ..metrics.folder import SAMPLES_DIRNAME, load_manifest
        from ..style import FULL

        methods = list(methods or run_dirs)
        fig, axes = plt.subplots(
            len(methods), frames, figsize=(FULL, FULL / frames * len(methods) * 0.8), squeeze=False
        )
        for row, method in zip(axes, methods):
            first = load_manifest(run_dirs[method])["samples"][0]
            reader = imageio_ffmpeg.read_frames(str(Path(run_dirs[method]) / SAMPLES_DIRNAME / first["file"]))
            w, h = next(reader)["size"]
            video = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
            for ax, t in zip(row, np.linspace(0, len(video) - 1, frames).round().astype(int)):
                ax.imshow(video[t])
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"t={t}", fontsize=6)
            row[0].set_ylabel(method)
        fig.tight_layout()
        return fig
