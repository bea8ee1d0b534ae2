"""Evaluation of real-model profiles: FID and CLIP-SIM on a COCO 2017 split (T2I), VBench (T2V).

Methods of a profile: "baseline" (the pipeline's own default sampling, always evaluated first),
"none" (no guidance) and the names of `profiles.<p>.guidance` in params.yaml (see
`ditguide.render.guidance_spec`). Every method takes one path:

    renderer -> `generate` writes files into runs/<profile>/<t2i|t2v>/<method>-<key>/samples/
             -> metrics read them back (`Samples.from_dir`, which checks every file decodes)

The key hashes the renderer's description (model, weights fingerprint, spec, steps, size, seed)
and the prompt list, so a changed spec, model or prompt set never reuses old files, and an
interrupted run resumes where it stopped. All inputs (spec names, COCO split and reference,
judge weights, the VBench environment and its dimensions, model weights) are checked before the
first sample is rendered: a missing piece fails in seconds with the command that provides it,
not after hours of sampling.

Cost: NFE per step = transformer forwards per sampling step; native CFG counts 2 when the
pipeline's CFG is on, else 1; guided methods report the block evaluations their denoiser counted
(divided by the blocks of one forward), so a skipped block is not charged.

Multi-GPU: under `accelerate launch -m ditguide.evaluation_real ...` every process renders its
shard of every method; the main process then scores (the others return None).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics.vbench_score import VIDEOS_PER_PROMPT
from .profiles import ConfigError, Profile, load_params, load_pipeline, load_profile
from .render import PipelineRenderer, check_against_config, guidance_spec
from .style import latex_table, write_text
from .versions import package_versions

BASELINE, NONE = "baseline", "none"
LIBRARIES = ("ditguide", "torch", "diffusers", "transformers", "clean-fid", "open_clip_torch")


# ----------------------------------------------------------------------------------------------
# shared: methods, run folders, cost


def method_names(prof: Profile, specs: Sequence[str] | None) -> list[str]:
    """["baseline", *specs] (specs default: every guidance spec of the profile), each validated: its
    shape, and its block edits against the model's config (built on the meta device; no weights load)."""
    if isinstance(specs, str):
        raise ConfigError(f"specs must be a list of names, got the string {specs!r}")
    specs = list(prof.extra.get("guidance") or {}) if specs is None else list(specs)
    names = list(dict.fromkeys([BASELINE, *specs]))
    # ConfigError naming the allowed specs
    guided = {name: guidance_spec(prof, name) for name in names if name not in (BASELINE, NONE)}
    check_against_config(prof, guided)
    return names


def renderer_for(prof: Profile, pipe, method: str, base_seed: int) -> PipelineRenderer:
    if method == BASELINE:
        return PipelineRenderer(prof, pipe, base_seed=base_seed)
    if method == NONE:
        return PipelineRenderer(prof, pipe, cfg_scale=1.0, base_seed=base_seed)
    return PipelineRenderer(prof, pipe, guidance=guidance_spec(prof, method), base_seed=base_seed)


def run_dir(
    runs_dir: str | os.PathLike,
    prof: Profile,
    task: str,
    method: str,
    renderer: PipelineRenderer,
    prompts: Sequence[str],
    samples_per_prompt: int,
) -> Path:
    """runs/<profile>/<task>/<method>-<key>. The prompts are in the key because a generation folder
    holds one plan (`generate` refuses to mix two): another split or prompt subset gets its own."""
    what = {
        "renderer": renderer.describe(),
        "samples_per_prompt": samples_per_prompt,
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return Path(runs_dir) / prof.name / task / f"{method}-{key}"


def method_entry(method: str, renderer: PipelineRenderer, nfe: float, out: Path) -> dict:
    return {
        "nfe_per_step": nfe,
        "cfg_scale": None if renderer.guidance is not None else renderer.cfg_scale,
        "spec": None if renderer.guidance is None else renderer.guidance.to_dict(),
        "run_dir": str(out),
    }


def _guidance_label(m: dict) -> str:
    if m["spec"] is not None:
        return m["spec"].get("name") or "spec"
    return f"CFG {m['cfg_scale']:g}" if m["cfg_scale"] > 1 else "CFG off"


def _tex(text) -> str:
    """Underscores of names (dimensions, model tags) escaped for a LaTeX caption."""
    return str(text).replace("_", "\\_")


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _render_methods(
    prof, pipe, methods, prompts, *, task, runs_dir, batch_size, base_seed, samples_per_prompt, limit, state
) -> dict[str, tuple[PipelineRenderer, Path]]:
    from .generate import generate

    renderers = {method: renderer_for(prof, pipe, method, base_seed) for method in methods}
    for renderer in renderers.values():
        renderer.validate(prompts)  # every spec against the model before the first method renders
    out = {}
    for method, renderer in renderers.items():
        folder = run_dir(runs_dir, prof, task, method, renderer, prompts, samples_per_prompt)
        generate(
            renderer,
            prompts,
            folder,
            batch_size=batch_size,
            base_seed=base_seed,
            samples_per_prompt=samples_per_prompt,
            limit=limit,
            state=state,
        )
        out[method] = (renderer, folder)
    state.wait_for_everyone()
    return out


def _state(state):
    from .generate import default_state

    return default_state() if state is None else state


# ----------------------------------------------------------------------------------------------
# text to image: COCO 2017, FID + CLIP-SIM


def coco_commands(data_dir: str | os.PathLike, split: str, resolution: int) -> str:
    """The commands that prepare a COCO split and its reference (as the coco_reference DVC stage runs them)."""
    d = f"--data-dir {data_dir}"
    return (
        f"`python -m ditguide.coco annotations {d}`, `python -m ditguide.coco sample {d}`, "
        f"`python -m ditguide.coco images {d} --split {split}`, "
        f"`python -m ditguide.coco reference {d} --split {split} --resolution {resolution}`, "
        f"`python -m ditguide.coco features {d} --split {split} --resolution {resolution}` "
        f"(or set coco_resolutions: [{resolution}] in params.yaml and run `dvc repro`)"
    )


def check_coco(data_dir: str | os.PathLike, split: str, resolution: int, extractor_id: str) -> tuple[list[dict], Path]:
    """(split records, reference folder) after checking that FID can run on them; MissingDataError if not."""
    from . import coco
    from .metrics.fid import features_path, reference_images

    if resolution not in coco.RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r} is not allowed; allowed: {', '.join(map(str, coco.RESOLUTIONS))}")
    try:
        records = coco.read_split(data_dir, split)
    except coco.MissingDataError as e:
        raise coco.MissingDataError(f"{e}. Prepare COCO 2017 with {coco_commands(data_dir, split, resolution)}") from e
    ref = coco.reference_dir(data_dir, split, resolution)
    meta = ref / "meta.json"
    cached = features_path(ref, extractor_id).is_file()
    n_images = len(reference_images(ref)) if ref.is_dir() else 0
    if not meta.is_file() or (not cached and n_images != len(records)):
        raise coco.MissingDataError(
            f"COCO reference {ref} is missing or incomplete ({n_images} of {len(records)} images, "
            f"{'cached' if cached else 'no cached'} features {features_path(ref, extractor_id).name}). "
            f"Prepare it with {coco_commands(data_dir, split, resolution)}"
        )
    recorded = json.loads(meta.read_text())
    split_sha = hashlib.sha256((Path(data_dir) / "splits" / f"{split}.json").read_bytes()).hexdigest()
    if recorded.get("split_sha256") not in (None, split_sha) or int(recorded.get("n", len(records))) != len(records):
        raise coco.MissingDataError(
            f"COCO reference {ref} was made from another {split} split than {Path(data_dir) / 'splits'} holds now; "
            f"delete {ref} and rerun `python -m ditguide.coco reference --data-dir {data_dir} --split {split} "
            f"--resolution {resolution}` and `... features` for it"
        )
    return records, ref


@dataclass
class T2IRealResult:
    metrics: dict
    run_dirs: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        p = self.metrics["protocol"]
        rows = [
            (name, _guidance_label(m), m["nfe_per_step"], m["fid"], m["clip_sim"])
            for name, m in self.metrics["methods"].items()
        ]
        return latex_table(
            rows,
            ["method", "guidance", "NFE/step", "FID", "CLIP-SIM"],
            caption=(
                f"{_tex(self.metrics['profile'])}: text-to-image on MS-COCO 2017 (train captions, {p['split']} split, "
                f"{p['n']} captions, one image each, {p['generation']['steps']} steps, "
                f"{p['generation']['height']}x{p['generation']['width']}). FID (lower is better): {p['fid']['library']}, "
                f"{_tex(p['fid']['extractor'])}, vs {p['n_reference']} reference images at {p['resolution']}px. "
                f"CLIP-SIM (higher is better): open\\_clip {_tex(p['clip']['model'])} {_tex(p['clip']['pretrained'])}, "
                f"100 max(cos, 0). NFE/step: transformer forwards per step."
            ),
            label=f"tab:t2i_{self.metrics['profile']}",
            bold_best={3: "min", 4: "max"},
        )

    def sample_grid(self, methods: Sequence[str] | None = None, per_method: int = 6):
        """One row per method, the first `per_method` samples (same prompts and seeds in every row)."""
        import matplotlib.pyplot as plt
        from PIL import Image

        from .generate import SAMPLES_DIRNAME, load_manifest
        from .style import FULL

        methods = list(methods or self.run_dirs)
        n = min(per_method, self.metrics["protocol"]["n"])
        fig, axes = plt.subplots(len(methods), n, figsize=(FULL, FULL / n * len(methods) * 1.1), squeeze=False)
        for row, method in zip(axes, methods):
            plan = load_manifest(self.run_dirs[method])["samples"]
            for k, ax in enumerate(row):
                with Image.open(Path(self.run_dirs[method]) / SAMPLES_DIRNAME / plan[k]["file"]) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(method)
        fig.tight_layout()
        return fig

    def tradeoff_figure(self):
        """FID (x, lower is better) vs CLIP-SIM (y, higher is better), one point per method."""
        import matplotlib.pyplot as plt

        from . import style

        fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
        for name, m in self.metrics["methods"].items():
            ax.scatter(m["fid"], m["clip_sim"], color=style.color(name), s=18)
            ax.annotate(
                f"{name} ({m['nfe_per_step']:g} NFE)",
                (m["fid"], m["clip_sim"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.set_xlabel("FID ↓")
        ax.set_ylabel(f"CLIP-SIM ({self.metrics['protocol']['clip']['model']}) ↑")
        return fig


def evaluate_t2i_real(
    profile: str,
    *,
    split: str = "test",
    resolution: int = 512,
    limit: int | None = None,
    specs: Sequence[str] | None = None,
    batch_size: int = 4,
    base_seed: int = 0,
    params="params.yaml",
    data_dir: str | os.PathLike = "data/coco2017",
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    fid_extractor=None,
    fid_extractor_id: str | None = None,
    clip=None,
    num_workers: int | None = None,
    state=None,
) -> T2IRealResult | None:
    """FID and CLIP-SIM of the profile's baseline and guidance specs on COCO 2017 captions.

    split: the COCO sample's split ("test" to report, "dev" to tune); limit: only the first `limit`
    captions (FID then compares `limit` images with the whole reference, and says so).
    resolution: the reference images' size (512 or 256); the model renders at the profile's size.
    fid_extractor / fid_extractor_id: None = clean-fid's Inception (the protocol); tests pass a small
    network and a name for its feature cache. clip: a `metrics.clip_sim.ClipSim` (default: ViT-g-14
    laion2b_s12b_b42k). num_workers: image loader processes of FID (default min(8, CPUs)).
    """
    from .metrics import Samples, evaluate
    from .metrics.clip_sim import ClipSim
    from .metrics.fid import FID, INCEPTION_ID, inception_extractor

    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    if prof.family == "toy":
        raise ConfigError(
            f"profile {profile!r} is a toy-family profile: evaluate it with `dvc repro evaluate_t2i` "
            "(notebook 03), not in image_profiles"
        )
    if prof.kind != "image":
        raise ConfigError(
            f"profile {profile!r} makes {prof.kind}s: text-to-image needs an image profile (see evaluate_t2v)"
        )
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 2):
        raise ValueError(f"limit must be an integer >= 2 (FID needs two samples) or None, got {limit!r}")
    if fid_extractor is not None and not fid_extractor_id:
        raise ValueError(
            "a custom fid_extractor needs fid_extractor_id (its reference features are cached under that name)"
        )
    methods = method_names(prof, specs)
    extractor_id = fid_extractor_id or INCEPTION_ID
    records, reference = check_coco(data_dir, split, resolution, extractor_id)
    prompts = [r["caption"] for r in records]
    n = len(prompts) if limit is None else min(limit, len(prompts))
    device = _device(device)
    state = _state(state)
    if state.is_main_process:
        # The judges load now: missing weights must fail before hours of sampling, not after.
        if fid_extractor is None:
            fid_extractor = inception_extractor(device)
        clip = ClipSim(device=device) if clip is None else clip
        clip._load()
    pipe = load_pipeline(prof, device=device)

    rendered = _render_methods(
        prof,
        pipe,
        methods,
        prompts,
        task="t2i",
        runs_dir=runs_dir,
        batch_size=batch_size,
        base_seed=base_seed,
        samples_per_prompt=1,
        limit=n,
        state=state,
    )
    if not state.is_main_process:
        return None
    if fid_extractor_id:
        fid = FID(
            reference,
            extractor=fid_extractor,
            extractor_id=fid_extractor_id,
            resolution=resolution,
            device=device,
            num_workers=num_workers,
        )
    else:
        fid = FID(reference, resolution=resolution, device=device, num_workers=num_workers)
        fid.extractor = fid_extractor  # the Inception loaded above (FID would load it again lazily)
    result = T2IRealResult(metrics={"profile": profile, "task": "t2i", "methods": {}})
    details = {}
    for method, (renderer, folder) in rendered.items():
        scores = evaluate(Samples.from_dir(folder, n), [fid, clip])
        full = {k: v.as_dict() for k, v in scores.items()}
        # Per-sample scores (paired tests, CIs) stay beside the samples; the summary stays small.
        write_text(folder / f"scores-{split}-{resolution}-n{n}.json", json.dumps(full, indent=1, default=float))
        clip_details = {k: v for k, v in scores["clip_sim"].details.items() if k != "per_sample"}
        entry = {
            "fid": scores["fid"].value,
            "clip_sim": scores["clip_sim"].value,
            "clip_sim_ci95": clip_details["ci95"],
            "n": scores["fid"].n,
            **method_entry(method, renderer, renderer.nfe_per_step(prompts[0]), folder),
            "details": {"fid": scores["fid"].details, "clip_sim": clip_details},
        }
        result.metrics["methods"][method] = entry
        result.run_dirs[method] = folder
        details = entry["details"]
    result.metrics["protocol"] = {
        "dataset": "MS-COCO 2017 train captions (ditguide.coco: seeded sample, one caption per image)",
        "split": split,
        "n": n,
        "n_split": len(records),
        "n_reference": details["fid"]["n_reference"],
        "resolution": resolution,
        "reference": str(reference),
        "fid": {k: details["fid"][k] for k in ("library", "extractor", "resize")},
        "clip": {k: details["clip_sim"][k] for k in ("model", "pretrained", "definition")},
        "generation": {
            "model": prof.model,
            "dtype": prof.dtype,
            "steps": prof.steps,
            "height": prof.height,
            "width": prof.width,
            "base_seed": base_seed,
            "cfg_scale": prof.cfg_scale,
            "distilled_guidance": prof.distilled_guidance,
            "negative_prompt": prof.negative_prompt,
        },
        "libraries": package_versions(LIBRARIES),
    }
    return result


# ----------------------------------------------------------------------------------------------
# text to video: VBench


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
    from .metrics import vbench_score as vb

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

    from .metrics.vbench_score import VBENCH_RUN_SCRIPT, VBenchEnvironmentError

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


@dataclass
class T2VResult:
    metrics: dict
    run_dirs: dict[str, Path] = field(default_factory=dict)

    def _caption(self) -> str:
        p = self.metrics["protocol"]
        g = p["generation"]
        dims = (
            "all 16 dimensions"
            if len(p["dimensions"]) == 16
            else "dimensions " + ", ".join(d.replace("_", " ") for d in p["dimensions"])
        )
        subset = "" if p["limit_per_dimension"] is None else f", first {p['limit_per_dimension']} prompts per dimension"
        return (
            f"{_tex(self.metrics['profile'])}: VBench ({p['vbench']}, mode {_tex(p['mode'])}, {dims}) on {_tex(p['suite_name'])}"
            f"{subset}: {p['n_prompts']} prompts x {p['samples_per_prompt']} seeds, {g['num_frames']} frames "
            f"{g['height']}x{g['width']} at {g['fps']} fps, {g['steps']} steps, prompt extension "
            f"{'on' if g['prompt_extension'] else 'off'}. Scores in percent (higher is better); "
            "NFE/step: transformer forwards per step."
        )

    def table(self) -> str:
        """Methods x (NFE/step, Total, Quality, Semantic where complete, and the dimensions when not all 16)."""
        methods = self.metrics["methods"]
        dims = self.metrics["protocol"]["dimensions"]
        aggregates = [k for k in ("total", "quality", "semantic") if all(m[k] is not None for m in methods.values())]
        shown_dims = [] if len(dims) == 16 else list(dims)
        rows = [
            (
                name,
                _guidance_label(m),
                m["nfe_per_step"],
                *(m[k] for k in aggregates),
                *(m["raw"][d] for d in shown_dims),
            )
            for name, m in methods.items()
        ]
        columns = [
            "method",
            "guidance",
            "NFE/step",
            *(k.capitalize() for k in aggregates),
            *(d.replace("_", " ") for d in shown_dims),
        ]
        return latex_table(
            rows,
            columns,
            caption=self._caption(),
            label=f"tab:t2v_{self.metrics['profile']}",
            bold_best={i: "max" for i in range(3, len(columns))},
        )

    def dimensions_table(self) -> str:
        """Dimensions x methods: raw VBench score (percent) of every evaluated dimension."""
        methods = self.metrics["methods"]
        rows = [
            (d.replace("_", " "), *(m["raw"][d] for m in methods.values()))
            for d in self.metrics["protocol"]["dimensions"]
        ]
        return latex_table(
            rows,
            ["dimension", *methods],
            caption=self._caption(),
            label=f"tab:t2v_{self.metrics['profile']}_dimensions",
        )

    def dimensions_figure(self):
        """Raw score of every evaluated dimension, one marker per method (a dot plot: the methods differ by
        fractions of a point on a 0-100 scale, which bars would hide)."""
        import matplotlib.pyplot as plt

        from . import style

        dims = self.metrics["protocol"]["dimensions"]
        methods = self.metrics["methods"]
        fig, ax = plt.subplots(figsize=(style.FULL if len(dims) > 4 else style.COLUMN, 2.4))
        offsets = np.linspace(-0.2, 0.2, len(methods)) if len(methods) > 1 else [0.0]
        for off, (name, m) in zip(offsets, methods.items()):
            ax.scatter(
                np.arange(len(dims)) + off, [m["raw"][d] for d in dims], s=14, label=name, color=style.color(name)
            )
        ax.set_xticks(
            np.arange(len(dims)),
            [d.replace("_", " ") for d in dims],
            rotation=30 if len(dims) > 1 else 0,
            ha="right" if len(dims) > 1 else "center",
        )
        ax.set_xlim(-0.6, len(dims) - 0.4)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel("VBench score (%) ↑")
        ax.legend(frameon=False, fontsize=6)
        return fig

    def frames_figure(self, methods: Sequence[str] | None = None, frames: int = 4):
        """First video (prompt 0, seed 0) of each method: `frames` evenly spaced frames per row."""
        import imageio_ffmpeg
        import matplotlib.pyplot as plt

        from .generate import SAMPLES_DIRNAME, load_manifest
        from .style import FULL

        methods = list(methods or self.run_dirs)
        fig, axes = plt.subplots(
            len(methods), frames, figsize=(FULL, FULL / frames * len(methods) * 0.8), squeeze=False
        )
        for row, method in zip(axes, methods):
            first = load_manifest(self.run_dirs[method])["samples"][0]
            reader = imageio_ffmpeg.read_frames(str(Path(self.run_dirs[method]) / SAMPLES_DIRNAME / first["file"]))
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


def evaluate_t2v(
    profile: str,
    *,
    prompts: str | os.PathLike = "standard",
    samples_per_prompt: int = 5,
    limit: int | None = None,
    dimensions: Sequence[str] | None = None,
    specs: Sequence[str] | None = None,
    batch_size: int = 1,
    base_seed: int = 0,
    params="params.yaml",
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    vbench_python: str | os.PathLike | None = None,
    vbench_device: str | None = None,
    vbench_nproc: int = 1,
    timeout: float | None = None,
    state=None,
) -> T2VResult | None:
    """VBench scores of the profile's baseline and guidance specs.

    prompts: "standard" (VBench's own VBench_full_info.json, 946 records, 944 distinct prompts) or a
    path to a suite in that format. dimensions: default all 16 (then Quality, Semantic and Total are
    computed); fewer give per-dimension scores and only the aggregates they complete. Only the
    prompts of the chosen dimensions are rendered; limit: at most `limit` prompts per dimension
    (a stated subset, for smoke tests or a large model). samples_per_prompt: seeds per prompt (VBench:
    5). vbench_device: where VBench runs (default cuda if available); vbench_nproc > 1 runs VBench's
    own multi-GPU evaluation.
    """
    from .metrics import Samples
    from .metrics import vbench_score as vb

    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    if prof.kind != "video":
        raise ConfigError(
            f"profile {profile!r} makes {prof.kind}s: VBench needs a video profile (see evaluate_t2i_real)"
        )
    if not (isinstance(samples_per_prompt, int) and 1 <= samples_per_prompt <= VIDEOS_PER_PROMPT):
        raise ValueError(
            f"samples_per_prompt must be an integer in 1..{VIDEOS_PER_PROMPT} "
            f"(VBench reads videos -0 to -4 of each prompt), got {samples_per_prompt!r}"
        )
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 (prompts per dimension) or None, got {limit!r}")
    dims = list(vb.DIMENSIONS) if dimensions is None else list(dict.fromkeys(dimensions))
    if not dims:
        raise ValueError("dimensions is empty (None means all 16)")
    vb.check_known(dims)
    methods = method_names(prof, specs)
    python = vb.check_vbench_python(vbench_python)
    suite_path = vb.standard_prompt_suite(python) if str(prompts) == "standard" else Path(prompts)
    subset = suite_subset(read_suite(suite_path), dims, limit)
    prompt_list = [r["prompt_en"] for r in subset]
    vbench_device = vbench_device or _device(None)
    state = _state(state)
    if state.is_main_process:
        check_vbench_dimensions(python, dims, timeout)  # before sampling: detectron2, weights
    pipe = load_pipeline(prof, device=_device(device))
    rendered = _render_methods(
        prof,
        pipe,
        methods,
        prompt_list,
        task="t2v",
        runs_dir=runs_dir,
        batch_size=batch_size,
        base_seed=base_seed,
        samples_per_prompt=samples_per_prompt,
        limit=None,
        state=state,
    )
    if not state.is_main_process:
        return None

    subset_json = json.dumps(subset, indent=1, ensure_ascii=False)
    result = T2VResult(metrics={"profile": profile, "task": "t2v", "methods": {}})
    records = {}
    for method, (renderer, folder) in rendered.items():
        samples = Samples.from_dir(folder)  # every video present and decodable
        # One results folder per (videos, evaluated prompt subset): VBench skips finished dimensions.
        results = folder / f"vbench-{hashlib.sha256(subset_json.encode()).hexdigest()[:10]}"
        results.mkdir(parents=True, exist_ok=True)
        (results / "full_info.json").write_text(subset_json, encoding="utf-8")
        raw = vb.run_vbench(
            samples.root,
            results,
            dimensions=dims,
            python=python,
            device=vbench_device,
            mode="vbench_standard",
            full_info=results / "full_info.json",
            videos_per_prompt=samples_per_prompt,
            nproc=vbench_nproc,
            timeout=timeout,
        )
        records = {d: json.loads((results / f"{d}.json").read_text()) for d in dims}
        entry = {
            **vbench_summary(raw),
            "n_videos": {d: records[d]["n_videos"] for d in dims},
            **method_entry(method, renderer, renderer.nfe_per_step(prompt_list[0]), folder),
            "results_dir": str(results),
        }
        result.metrics["methods"][method] = entry
        result.run_dirs[method] = folder
    first = next(iter(records.values()))
    result.metrics["protocol"] = {
        "suite": str(suite_path),
        "suite_name": "VBench's standard prompt suite"
        if str(prompts) == "standard"
        else f"the prompt suite {Path(prompts).name}",
        "dimensions": dims,
        "limit_per_dimension": limit,
        "n_prompts": len(prompt_list),
        "samples_per_prompt": samples_per_prompt,
        "n_videos": len(prompt_list) * samples_per_prompt,
        "mode": first["mode"],
        "vbench": f"vbench {first['vbench_version']}",
        "vbench_device": vbench_device,
        "scoring": "VBench scripts/cal_final_score.py: n = (x - Min)/(Max - Min) * weight; Quality = sum n / 6.5 "
        "over 7 dims, Semantic = sum n / 9 over 9 dims, Total = (4 Quality + Semantic) / 5",
        "generation": {
            "model": prof.model,
            "dtype": prof.dtype,
            "steps": prof.steps,
            "height": prof.height,
            "width": prof.width,
            "num_frames": prof.num_frames,
            "fps": prof.fps or 16,
            "flow_shift": prof.flow_shift,
            "cfg_scale": prof.cfg_scale,
            "base_seed": base_seed,
            "negative_prompt": prof.negative_prompt,
            "prompt_extension": prof.prompt_extension,
        },
        "libraries": package_versions(LIBRARIES[:4]),
    }
    return result


# ----------------------------------------------------------------------------------------------
# command line (multi-GPU rendering: `accelerate launch -m ditguide.evaluation_real ...`)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ditguide.evaluation_real", description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=("t2i", "t2v"))
    ap.add_argument("--profile", required=True)
    ap.add_argument("--specs", nargs="*", default=None, help="default: every guidance spec of the profile")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--split", default="test", help="t2i: COCO split")
    ap.add_argument("--resolution", type=int, default=512, help="t2i: reference resolution")
    ap.add_argument("--data-dir", default="data/coco2017", help="t2i")
    ap.add_argument("--prompts", default="standard", help="t2v: 'standard' or a VBench-format suite JSON")
    ap.add_argument("--samples-per-prompt", type=int, default=5, help="t2v")
    ap.add_argument("--dimensions", nargs="+", default=None, help="t2v: default all 16")
    ap.add_argument("--out", default=None, help="write the metrics JSON here (main process)")
    from .cli import add_debug_flag, run_reporting_user_errors

    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_reporting_user_errors(lambda: _run_cli(args), debug=args.debug)


def _run_cli(args) -> int:
    common = dict(
        specs=args.specs, limit=args.limit, base_seed=args.base_seed, params=args.params, runs_dir=args.runs_dir
    )
    if args.batch_size is not None:
        common["batch_size"] = args.batch_size
    if args.task == "t2i":
        result = evaluate_t2i_real(
            args.profile, split=args.split, resolution=args.resolution, data_dir=args.data_dir, **common
        )
    else:
        result = evaluate_t2v(
            args.profile,
            prompts=args.prompts,
            samples_per_prompt=args.samples_per_prompt,
            dimensions=args.dimensions,
            **common,
        )
    if result is not None:
        text = json.dumps(result.metrics, indent=2, sort_keys=True) + "\n"
        if args.out:
            write_text(args.out, text)
        print(text)
        folders = ", ".join(f"{m}: {d}" for m, d in result.run_dirs.items())
        print(f"samples in {folders}" + (f"; metrics written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
