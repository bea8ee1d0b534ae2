"""MS-COCO 2017 (text to image): FID (clean-fid) and CLIP-SIM (open_clip) on a split of train captions.

The split, its reference images and their cached features are prepared by `python -m ditguide.coco`
(the coco_reference DVC stage); `prepare` checks them before any sampling and names the commands
that make a missing piece. Per-sample scores are written beside the samples
(`scores-<split>-<resolution>-n<n>.json`), so paired tests need no rescoring.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..profiles import Profile
from ..style import latex_table, write_text
from ..versions import package_versions
from .base import Benchmark, Caption, check_option, guidance_label, image_of, is_int, tex

LIBRARIES = ("ditguide", "torch", "diffusers", "transformers", "clean-fid", "open_clip_torch")


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
    from .. import coco
    from ..metrics.fid import features_path, reference_images

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


class Coco(Benchmark):
    """split: "test" to report, "dev" to tune; resolution: the reference images' size (512, or 256 for
    the literature); limit: only the first `limit` captions (FID then compares `limit` images with the
    whole reference, and the protocol says so). fid_extractor / fid_extractor_id: None is clean-fid's
    Inception (the protocol); tests pass a small network and a name for its feature cache. clip: a
    `metrics.clip_sim.ClipSim` (default ViT-g-14 laion2b_s12b_b42k). num_workers: FID's image loaders."""

    name = "coco"
    task = "t2i"

    def __init__(
        self,
        split: str = "test",
        resolution: int = 512,
        limit: int | None = None,
        data_dir: str | os.PathLike = "data/coco2017",
        fid_extractor=None,
        fid_extractor_id: str | None = None,
        clip=None,
        num_workers: int | None = None,
    ):
        from .. import coco

        check_option(split in coco.SPLITS, "split", split, ", ".join(coco.SPLITS))
        check_option(resolution in coco.RESOLUTIONS, "resolution", resolution, ", ".join(map(str, coco.RESOLUTIONS)))
        check_option(
            limit is None or is_int(limit, 2), "limit", limit, "an integer >= 2 (FID needs two samples) or None"
        )
        if fid_extractor is not None and not fid_extractor_id:
            raise ValueError(
                "a custom fid_extractor needs fid_extractor_id (its reference features are cached under that name)"
            )
        self.split, self.resolution, self.limit, self.data_dir = split, resolution, limit, data_dir
        self.fid_extractor, self.fid_extractor_id, self.clip, self.num_workers = (
            fid_extractor,
            fid_extractor_id,
            clip,
            num_workers,
        )
        self._records: list[dict] | None = None
        self._reference: Path | None = None
        self._fid = None

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        if profile.kind != "image":
            return f"text-to-image needs an image profile; {profile.name!r} makes {profile.kind}s (see vbench)"
        if profile.family == "toy":
            return (
                "it evaluates real text-to-image models; toy-family profiles have their own benchmark (digits, scenes)"
            )
        return None

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        from ..metrics.clip_sim import ClipSim
        from ..metrics.fid import FID, INCEPTION_ID, inception_extractor

        self._records, self._reference = check_coco(
            self.data_dir, self.split, self.resolution, self.fid_extractor_id or INCEPTION_ID
        )
        if not main_process:
            return
        # The judges load now: missing weights must fail before hours of sampling, not after.
        extractor = self.fid_extractor if self.fid_extractor is not None else inception_extractor(device)
        self.clip = ClipSim(device=device) if self.clip is None else self.clip
        self.clip._load()
        kw = dict(resolution=self.resolution, device=device, num_workers=self.num_workers)
        if self.fid_extractor_id:
            self._fid = FID(self._reference, extractor=extractor, extractor_id=self.fid_extractor_id, **kw)
        else:
            self._fid = FID(self._reference, **kw)
            self._fid.extractor = extractor  # the Inception loaded above (FID would load it again lazily)

    def captions(self) -> list[Caption]:
        return [
            Caption(str(r["caption_id"]), r["caption"], {"image_id": r["image_id"], "file_name": r["file_name"]})
            for r in self._records
        ]

    def count(self) -> int:
        return len(self._records) if self.limit is None else min(self.limit, len(self._records))

    def score(self, samples) -> dict:
        from ..metrics import evaluate

        scores = evaluate(samples, [self._fid, self.clip])
        full = {k: v.as_dict() for k, v in scores.items()}
        folder = samples.root.parent
        # Per-sample scores (paired tests, CIs) stay beside the samples; the summary stays small.
        name = f"scores-{self.split}-{self.resolution}-n{len(samples)}.json"
        write_text(folder / name, json.dumps(full, indent=1, default=float))
        clip_details = {k: v for k, v in scores["clip_sim"].details.items() if k != "per_sample"}
        return {
            "fid": scores["fid"].value,
            "clip_sim": scores["clip_sim"].value,
            "clip_sim_ci95": clip_details["ci95"],
            "n": scores["fid"].n,
            "run_dir": str(folder),
            "details": {"fid": scores["fid"].details, "clip_sim": clip_details},
        }

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        details = next(iter(methods.values()))["details"]
        protocol = {
            "dataset": "MS-COCO 2017 train captions (ditguide.coco: seeded sample, one caption per image)",
            "split": self.split,
            "n": self.count(),
            "n_split": len(self._records),
            "n_reference": details["fid"]["n_reference"],
            "resolution": self.resolution,
            "reference": str(self._reference),
            "fid": {k: details["fid"][k] for k in ("library", "extractor", "resize")},
            "clip": {k: details["clip_sim"][k] for k in ("model", "pretrained", "definition")},
            "generation": {
                "model": profile.model,
                "dtype": profile.dtype,
                "steps": profile.steps,
                "height": profile.height,
                "width": profile.width,
                "base_seed": base_seed,
                "cfg_scale": profile.cfg_scale,
                "distilled_guidance": profile.distilled_guidance,
                "negative_prompt": profile.negative_prompt,
            },
            "libraries": package_versions(LIBRARIES),
        }
        return {"task": "t2i", "protocol": protocol}

    def summary(self, name: str, m: dict) -> str:
        return f"{name:>18}: FID {m['fid']:.3f}  CLIP-SIM {m['clip_sim']:.3f}  NFE/step {m['nfe_per_step']:g}"

    def table(self, metrics: dict) -> str:
        p = metrics["protocol"]
        rows = [
            (name, guidance_label(m), m["nfe_per_step"], m["fid"], m["clip_sim"])
            for name, m in metrics["methods"].items()
        ]
        return latex_table(
            rows,
            ["method", "guidance", "NFE/step", "FID", "CLIP-SIM"],
            caption=(
                f"{tex(metrics['profile'])}: text-to-image on MS-COCO 2017 (train captions, {p['split']} split, "
                f"{p['n']} captions, one image each, {p['generation']['steps']} steps, "
                f"{p['generation']['height']}x{p['generation']['width']}). FID (lower is better): {p['fid']['library']}, "
                f"{tex(p['fid']['extractor'])}, vs {p['n_reference']} reference images at {p['resolution']}px. "
                f"CLIP-SIM (higher is better): open\\_clip {tex(p['clip']['model'])} {tex(p['clip']['pretrained'])}, "
                f"100 max(cos, 0). NFE/step: transformer forwards per step."
            ),
            label=f"tab:t2i_{metrics['profile']}",
            bold_best={3: "min", 4: "max"},
        )

    def tradeoff_figure(self, metrics: dict):
        """FID (x, lower is better) vs CLIP-SIM (y, higher is better), one point per method."""
        import matplotlib.pyplot as plt

        from .. import style

        fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
        for name, m in metrics["methods"].items():
            ax.scatter(m["fid"], m["clip_sim"], color=style.color(name), s=18)
            label = f"{name} ({m['nfe_per_step']:g} NFE)"
            ax.annotate(label, (m["fid"], m["clip_sim"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.set_xlabel("FID ↓")
        ax.set_ylabel(f"CLIP-SIM ({metrics['protocol']['clip']['model']}) ↑")
        return fig

    def sample_grid(
        self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, per_method: int = 6
    ):
        """One row per method, the first `per_method` samples (same prompts and seeds in every row)."""
        import matplotlib.pyplot as plt

        from ..style import FULL

        methods = list(methods or run_dirs)
        n = min(per_method, metrics["protocol"]["n"])
        fig, axes = plt.subplots(len(methods), n, figsize=(FULL, FULL / n * len(methods) * 1.1), squeeze=False)
        for row, method in zip(axes, methods):
            for k, ax in enumerate(row):
                ax.imshow(image_of(run_dirs[method], k))
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(method)
        fig.tight_layout()
        return fig
