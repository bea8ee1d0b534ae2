"""The layer map (notebook 01) on real profiles: FLUX.1-dev, CogView4, Wan 2.1 (and the tiny test profiles).

`RealBed` gives `ditguide.analysis` what a testbed adapter (`ditguide.testbeds.beds`) gives it, for a
model whose data distribution is unknown:

- captions of a small dev set: COCO 2017 dev captions for T2I (`ditguide.coco`, the split notebook 03
  tunes on), VBench's standard prompts for T2V (VBench has no split: a seeded permutation of its
  distinct prompts, dev from the front and test from the back);
- sampling through the pipeline at the profile's default settings (its own CFG on both branches, or
  FLUX's distilled guidance), the edit attached to the transformer, so it acts on every branch;
- scores per seed set: T2I small-N FID against the whole COCO dev reference (clean-fid's protocol,
  features from arrays, `inception_features`) and CLIP-SIM (`metrics.clip_sim`); T2V CLIP-SIM over
  judged frames and VBench's temporal-flickering formula. Small N is in the key (`fid_small_n`) and in
  `labels`: FID of a few dozen samples is biased upward, so only its change on the same seeds is read;
- the perceptual change: the distance between L2-normalised DINOv2 image embeddings (CLS token) of
  the edited and the unedited sample with the same seed (CLIP image embeddings without transformers).

There is no ideal denoiser D*, so `denoiser_scan` records, for every block along the model's own
sampling trajectories, |dh| / |h| and cos(h_in, h_out), and the error alignment as absent (null)
with the reason. `estimate_gpu_time` times a few forwards (per block) and counts configs x samples
x steps x NFE, so the notebook prints the cost before the scan starts.

Tiny test profiles (`model: tiny:<family>`) get tiny random judges built in code, labelled as such.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import analysis
from .families import get_family
from .profiles import ConfigError, Profile

ALIGNMENT_ABSENT = (
    "no ideal denoiser D* exists for a real model (its data distribution is unknown), so the error "
    "alignment cos(D_edit - D, D - D*) cannot be computed; it is left out rather than estimated"
)
OPTIONS = ("data_dir", "resolution", "prompts", "per_set", "batch_size", "device", "vbench_python")
DINOV2_ID = "facebook/dinov2-base"
TINY_INCEPTION_ID = "tiny-random"  # the FID feature cache name of the tiny profiles' stand-in extractor
FRAMES_JUDGED = 8  # evenly spaced frames of a video go through CLIP and DINOv2 (all frames: flickering)
SCHEMA = (
    analysis.SCHEMA
    + """
real profiles (ditguide.analysis_real.RealBed; no D*), the fields that differ:
  denoiser: {t_grid, samples, steps, trajectory: how x_t was made (the model's own unedited sampling),
             ideal: null, model_error: null, alignment: null, alignment_absent: the reason,
             residuals: [{block, t, step, sigma, rel_update, rel_update_se, cos_in_out, cos_in_out_se}]
             (t: the grid point; step, sigma: the sampling step nearest to it, conditional forward)}
  generation: {samples, seed_sets, per_set, steps, weights, base, protocol: {dev set, judges, sampling},
             labels: {metric: definition (small N stated)}, records: [{edit, block, window,
             d_fid_small_n, d_clip_sim (T2I) | d_clip_sim, d_temporal_flickering (T2V), perceptual, *_se}]}
             (perceptual: |f_edit - f_base| of L2-normalised DINOv2 CLS embeddings, same seed, in [0, 2])
  candidates: {weak: [], weak_absent: the reason, strong: [...], twin_alignment: {}}
  cost_estimate: {device, batch_size, steps, nfe_per_step, forward_s, block_s, other_s, judge_s,
             configs, samples_per_config, denoiser_samples, generation_s, denoiser_s, total_s, timed_steps,
             notes}  (seconds per sample, measured over timed_steps steps; the totals count configs x samples
             x steps x NFE; see CostEstimate)"""
)


def is_real(bed) -> bool:
    return isinstance(bed, RealBed)


def per_profile(value, profile: str, name: str) -> int:
    """`value` itself (an integer >= 1) or `value[profile]` of a {profile: integer} mapping."""
    if isinstance(value, dict):
        if profile not in value:
            raise ConfigError(
                f"{name} has no entry for profile {profile!r}; it has {', '.join(map(str, value)) or 'none'} "
                f"(add `{profile}: N` under layer_analysis.{name} in params.yaml)"
            )
        value = value[profile]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} for profile {profile!r} is not allowed; allowed: an integer >= 1")
    return value


def check_options(options: dict) -> None:
    """The keys of layer_analysis.real (checked for every profile, so a typo fails on the testbeds too)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"layer_analysis.real: unknown key(s) {unknown}; allowed: {', '.join(OPTIONS)}")


def bed_for(profile: Profile, **real):
    """The layer map's bed of any profile: a testbed's (`testbeds.beds.bed_for`: its D*, judges) or, for a
    real model, `RealBed(profile, **real)`. `real` (layer_analysis.real) is checked for every profile."""
    from .testbeds.beds import bed_for as testbed_for

    check_options(real)
    return testbed_for(profile) if profile.family == "toy" else RealBed(profile, **real)


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---- judges ----------------------------------------------------------------------------------


class TinyInception(torch.nn.Module):
    """Stand-in for clean-fid's Inception on tiny test profiles: (B, 3, 299, 299) in [0, 255] -> (B, 8)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.pool = torch.nn.AvgPool2d(23)
            self.fc = torch.nn.Linear(3 * 13 * 13, 8)

    def forward(self, x):
        return self.fc(self.pool(x / 255.0).flatten(1))


@torch.no_grad()
def inception_features(
    images: np.ndarray, extractor, resolution: int, device: str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """(N, D) FID features of uint8 (N, H, W, 3) arrays, exactly as `metrics.fid.image_features` computes
    them from the same images saved as PNG: center crop + Lanczos to `resolution`, clean-fid's 'clean'
    resize to 299 (float, no quantisation), the extractor. In memory: the scan keeps no files."""
    from cleanfid.resize import build_resizer

    from .metrics.fid import center_crop_resize

    resize = build_resizer("clean")
    out = []
    for k in range(0, len(images), batch_size):
        batch = [torch.from_numpy(resize(center_crop_resize(im, resolution))) for im in images[k : k + batch_size]]
        x = torch.stack(batch).permute(0, 3, 1, 2).to(device)
        out.append(extractor(x).detach().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


class Dinov2Features:
    """L2-normalised DINOv2 CLS embeddings (transformers' `Dinov2Model`, pooler output) of uint8 images.

    Preprocessing is DINOv2's own (its BitImageProcessor): bicubic resize of the short side to
    crop * 256 / 224, center crop, ImageNet mean/std; done in torch so no processor files are needed."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, model, name: str, crop: int = 224, device: str = "cpu", batch_size: int = 32):
        self.model, self.name, self.crop = model.to(device).eval(), name, int(crop)
        self.device, self.batch_size = device, batch_size

    @classmethod
    def from_pretrained(cls, model_id: str = DINOV2_ID, device: str = "cpu") -> Dinov2Features:
        from transformers import Dinov2Model

        from .metrics.clip_sim import MissingWeightsError

        try:
            model = Dinov2Model.from_pretrained(model_id)
        except OSError as err:
            raise MissingWeightsError(
                f"DINOv2 weights {model_id!r} are not in the model-hub cache and could not be downloaded "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). On a machine with internet "
                f"run `hf download {model_id}` and copy the hub cache (~/.cache/huggingface) here."
            ) from err
        return cls(model, model_id, device=device)

    @classmethod
    def tiny(cls, device: str = "cpu") -> Dinov2Features:
        """Random weights, a 32-pixel crop: for the tiny test profiles."""
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Dinov2Model(config)
        return cls(model, "dinov2 tiny config, random weights (tests)", crop=32, device=device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        short = round(self.crop * 256 / 224)
        out = []
        for k in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.asarray(images[k : k + self.batch_size])).permute(0, 3, 1, 2).float() / 255.0
            h, w = x.shape[-2:]
            size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            x = ((x[..., top : top + self.crop, left : left + self.crop] - mean) / std).to(self.device)
            cls_token = self.model(pixel_values=x).pooler_output.float()
            out.append(torch.nn.functional.normalize(cls_token, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


class ClipImageFeatures:
    """L2-normalised CLIP image embeddings of the CLIP-SIM judge: the perceptual features when
    transformers (DINOv2) is not installed."""

    def __init__(self, clip):
        self.clip, self.name = clip, f"open_clip {clip.model_name} image embedding"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        model, preprocess, _ = self.clip._load()
        dtype = next(model.parameters()).dtype
        out = []
        for k in range(0, len(images), self.clip.batch_size):
            x = torch.stack([preprocess(Image.fromarray(np.asarray(a))) for a in images[k : k + self.clip.batch_size]])
            f = model.encode_image(x.to(self.clip.device, dtype)).float()
            out.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def tiny_clip(device: str = "cpu"):
    """A tiny random open_clip model (the config the real-evaluation tests use), loaded now."""
    from .metrics.clip_sim import ClipSim

    clip = ClipSim(
        "ViT-B-32",
        pretrained=None,
        device=device,
        batch_size=16,
        model_kwargs=dict(
            embed_dim=32,
            vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip._load()
    return clip


@dataclass
class Judges:
    clip: object  # metrics.clip_sim.ClipSim
    perceptual: object  # Dinov2Features or ClipImageFeatures
    inception: object | None = None  # T2I only
    inception_id: str | None = None

    def describe(self) -> dict:
        return {
            "clip_sim": f"open_clip {self.clip.model_name} {self.clip.pretrained or 'random weights (tests)'}",
            "perceptual": self.perceptual.name,
            "fid": self.inception_id,
        }


def load_judges(video: bool, tiny: bool, device: str) -> Judges:
    """The real judges (clean-fid Inception, open_clip ViT-g-14, DINOv2), or tiny random ones for tiny profiles.

    Loaded before any sampling, so missing weights fail in seconds (MissingWeightsError, naming the download)."""
    from .metrics.clip_sim import ClipSim
    from .metrics.fid import INCEPTION_ID, inception_extractor

    if tiny:
        clip = tiny_clip(device)
        perceptual = Dinov2Features.tiny(device) if _has_transformers() else ClipImageFeatures(clip)
        inception, inception_id = (None, None) if video else (TinyInception().eval().to(device), TINY_INCEPTION_ID)
        return Judges(clip, perceptual, inception, inception_id)
    clip = ClipSim(device=device)
    clip._load()
    perceptual = Dinov2Features.from_pretrained(device=device) if _has_transformers() else ClipImageFeatures(clip)
    if video:  # the VBench prompts have no reference videos: no FID
        return Judges(clip, perceptual)
    return Judges(clip, perceptual, inception_extractor(device), INCEPTION_ID)


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the bed ---------------------------------------------------------------------------------


def model_problem(profile: Profile) -> str | None:
    """Why the profile's weights cannot load here, from the local folder or the hub cache (offline, in a
    moment), or None. `profiles.load_pipeline` still says so itself if files are missing inside the cache."""
    from .profiles import download_hint

    if profile.model.startswith("tiny:"):
        return None  # built in code
    path = Path(profile.model)
    if path.is_dir():
        return None if (path / "model_index.json").is_file() else f"no pipeline in {path} (model_index.json missing)"
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(profile.model, "model_index.json")
    except ValueError:  # not a valid hub id
        found = None
    if isinstance(found, str):
        return None
    return f"the weights of {profile.model!r} are not on this machine. " + download_hint(profile)


class RealBed:
    """What the layer map needs from a real profile (see the module docstring). Options are the keys of
    layer_analysis.real in params.yaml: `data_dir`/`resolution` (COCO dev set and its FID reference),
    `prompts` ("standard": VBench's suite; or a suite file), `per_set` (dev captions per seed set: an
    integer, or {profile: integer} overriding the notebook's per_set for the profiles it names),
    `batch_size` (samples per pipeline call), `device` (None: cuda if any), `vbench_python` (the VBench
    env's interpreter, for the standard suite)."""

    name = "real"
    alignment = "clip_sim"
    ideal_note = None

    def __init__(
        self,
        profile: Profile,
        *,
        data_dir="data/coco2017",
        resolution: int = 512,
        prompts="standard",
        per_set=None,
        batch_size: int = 4,
        device: str | None = None,
        vbench_python=None,
    ):
        from . import coco

        if profile.family == "toy":
            raise ConfigError(f"profile={profile.name!r} is a testbed: use its bed (ditguide.testbeds.beds.bed_for)")
        if resolution not in coco.RESOLUTIONS:
            raise ConfigError(
                f"layer_analysis.real.resolution={resolution!r} is not allowed; allowed: {', '.join(map(str, coco.RESOLUTIONS))}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"layer_analysis.real.batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
        if per_set is not None:  # an integer, or per-profile overrides of the notebook's per_set
            for name, value in (per_set if isinstance(per_set, dict) else {profile.name: per_set}).items():
                per_profile(value, name, "layer_analysis.real.per_set")
        self.profile, self.video, self.tiny = profile, profile.kind == "video", profile.model.startswith("tiny:")
        self.data_dir, self.resolution, self.prompts = Path(data_dir), int(resolution), str(prompts)
        self._per_set, self.batch_size, self.device = per_set, batch_size, _device(device)
        self.vbench_python = vbench_python
        self.keys = ("clip_sim", "temporal_flickering") if self.video else ("fid_small_n", "clip_sim")
        self.quality = "temporal_flickering" if self.video else "fid_small_n"
        self.quality_higher_better = self.video
        self.judges: Judges | None = None  # loaded by load_pipeline, with the split
        self.split, self._reference = "dev", None

    def per_set(self, default: int) -> int:
        """Dev captions per seed set: layer_analysis.real.per_set (for this profile), else `default`."""
        if isinstance(self._per_set, dict):
            return self._per_set.get(self.profile.name, default)
        return default if self._per_set is None else self._per_set

    def _suite_path(self) -> Path:
        if self.prompts != "standard":
            return Path(self.prompts)
        from .metrics.vbench_score import standard_prompt_suite

        return standard_prompt_suite(self.vbench_python)

    def check_inputs(self, split: str) -> None:
        """The weights and the dev set, before anything loads: one error listing every missing piece."""
        from .coco import MissingDataError
        from .metrics.fid import INCEPTION_ID, MissingWeightsError
        from .metrics.vbench_score import VBenchEnvironmentError

        weights = model_problem(self.profile)
        problems = [weights] if weights else []
        try:
            if self.video:
                from .benchmark.vbench import read_suite

                read_suite(self._suite_path())
            else:
                from .benchmark.coco2017 import check_coco

                check_coco(self.data_dir, split, self.resolution, TINY_INCEPTION_ID if self.tiny else INCEPTION_ID)
        except (FileNotFoundError, VBenchEnvironmentError) as err:
            problems.append(str(err).strip())
        if problems:
            what = " ".join(f"({k + 1}) {p}" for k, p in enumerate(problems))
            error = MissingWeightsError if weights else MissingDataError
            raise error(f"the layer map of profile {self.profile.name!r} cannot run on this machine: {what}")

    def load_pipeline(self, split: str = "dev"):
        """Check the inputs, load the judges (missing weights fail now), then the pipeline on `device`."""
        from .profiles import load_pipeline

        self.check_inputs(split)
        self.split = split  # the FID reference is this split's
        self.judges = load_judges(self.video, self.tiny, self.device)
        pipe = load_pipeline(self.profile, device=self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def captions(self, split: str, count: int) -> list[str]:
        """The first `count` captions of the COCO split (itself a seeded sample), or of the VBench prompts
        in a seeded order (dev from the front, test from the back; VBench has no split of its own)."""
        if self.video:
            from .benchmark.vbench import read_suite

            if split not in ("dev", "test"):
                raise ValueError(f"split={split!r} is not allowed; allowed: dev, test")
            pool = list(dict.fromkeys(r["prompt_en"] for r in read_suite(self._suite_path())))
            pool = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))]
            pool = pool if split == "dev" else pool[::-1]
            where = f"the prompt suite {self._suite_path()}"
        else:
            from .coco import read_split

            pool = [r["caption"] for r in read_split(self.data_dir, split)]
            where = f"the COCO {split} split in {self.data_dir}"
        if count > len(pool):
            raise ValueError(
                f"{count} captions requested but {where} has {len(pool)}; lower per_set / denoiser_samples"
            )
        return pool[:count]

    def sample(self, pipe, captions, indices, *, steps: int, base_seed: int, callback) -> np.ndarray:
        """uint8 (N, H, W, 3) images or (N, F, H, W, 3) videos at the profile's default sampling, seeded per index."""
        from .render import PipelineRenderer, to_uint8

        # The renderer's call arguments: the one place where a profile's sampling defaults meet a pipeline
        # call (size, own CFG or distilled guidance, negative prompt, per-sample generators, np output).
        kwargs = PipelineRenderer(self.profile, pipe, base_seed=base_seed, steps=steps)._call_kwargs(indices)
        out = pipe(prompt=list(captions), num_inference_steps=steps, callback_on_step_end=callback, **kwargs)
        return to_uint8(np.asarray(out.frames if self.video else out.images))

    def reference(self, captions: Sequence[str], seed: int):
        """T2I: the FID features of the whole COCO dev reference (cached beside it, computed once); T2V: None."""
        if self.video:
            return None
        from .coco import reference_dir
        from .metrics.fid import INCEPTION_ID, cache_reference_features, load_reference_features

        ref = reference_dir(self.data_dir, self.split, self.resolution)
        custom = self.judges.inception_id != INCEPTION_ID  # clean-fid's own loads itself inside the cache call
        cache_reference_features(
            ref,
            extractor=self.judges.inception if custom else None,
            extractor_id=self.judges.inception_id,
            resolution=self.resolution,
            device=self.device,
        )
        self._reference = load_reference_features(ref, self.judges.inception_id)[0]
        return self._reference

    def per_sample(self, samples: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-sample judge outputs: clip_sim, perceptual features, and FID features (T2I) or flickering (T2V)."""
        j = self.judges
        if not self.video:
            return {
                "clip_sim": j.clip.scores(list(samples), list(captions)),
                "features": j.perceptual(samples),
                "inception": inception_features(samples, j.inception, self.resolution, self.device),
            }
        n, f = samples.shape[:2]
        picked = np.unique(np.linspace(0, f - 1, min(FRAMES_JUDGED, f)).round().astype(int))
        frames = samples[:, picked].reshape(-1, *samples.shape[2:])
        clip = j.clip.scores(list(frames), [c for c in captions for _ in picked]).reshape(n, len(picked))
        # One vector per video whose distances are the RMS of the per-frame distances.
        features = j.perceptual(frames).reshape(n, -1) / math.sqrt(len(picked))
        diffs = np.abs(np.diff(samples.astype(np.float64), axis=1)).mean(axis=(2, 3, 4))
        return {"clip_sim": clip.mean(1), "features": features, "temporal_flickering": (255.0 - diffs.mean(1)) / 255.0}

    def score_sets(self, samples: np.ndarray, captions: list[str], reference, per_set: int) -> list[dict]:
        from .metrics.fid import fid_from_features

        per = self.per_sample(samples, captions)
        sets = []
        for k0 in range(0, len(samples), per_set):
            part = slice(k0, k0 + per_set)
            entry = {"clip_sim": float(per["clip_sim"][part].mean()), "features": per["features"][part]}
            if self.video:
                entry["temporal_flickering"] = float(per["temporal_flickering"][part].mean())
            else:
                entry["fid_small_n"] = fid_from_features(per["inception"][part], reference)
            sets.append(entry)
        return sets

    def labels(self, per_set: int) -> dict[str, str]:
        """What each score is; small N stated where it biases the number."""
        out = {
            "clip_sim": f"100 max(cos(image, caption), 0) of {self.judges.describe()['clip_sim']}, mean over the "
            + (
                f"{per_set} videos of a seed set ({FRAMES_JUDGED} evenly spaced frames each)"
                if self.video
                else f"{per_set} samples of a seed set"
            ),
            "perceptual": f"|f_edit - f_base| of L2-normalised {self.judges.perceptual.name} embeddings, same seed"
            + (f" (per video: RMS over {FRAMES_JUDGED} frames)" if self.video else ""),
        }
        if self.video:
            out["temporal_flickering"] = (
                "VBench's formula, (255 - mean |frame difference|) / 255, on the raw frames (no mp4)"
            )
        else:
            n_ref = None if self._reference is None else len(self._reference)
            out["fid_small_n"] = (
                f"small N: FID ({self.judges.inception_id}) of the {per_set} samples of a seed set against the {n_ref} "
                f"images of the COCO dev reference at {self.resolution}px; biased upward at this N, so only the change "
                "against the unedited model on the same seeds (d_fid_small_n) is read, never the level"
            )
        return out

    def protocol(self, captions: Sequence[str]) -> dict:
        dev = (
            f"VBench prompts ({self.prompts}), seeded order" if self.video else f"COCO 2017 dev split ({self.data_dir})"
        )
        p = self.profile
        return {
            "dev_set": dev,
            "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16],
            "judges": self.judges.describe(),
            "resolution": None if self.video else self.resolution,
            "sampling": f"the profile's default: CFG {p.cfg_scale:g}"
            + (f", distilled guidance {p.distilled_guidance:g}" if p.distilled_guidance is not None else "")
            + f", {p.height}x{p.width}"
            + (f"x{p.num_frames} frames" if self.video else "")
            + "; an edit acts on every branch of the call",
        }


# ---- denoiser-level scan: residuals along the model's own trajectories -------------------------


def _trajectory(pipe, bed: RealBed, captions, indices, steps: int, base_seed: int):
    """(sigma per step, per step the (B, n_blocks, 2) [rel, cos] rows of its first transformer call).

    The first call of a step is the conditional prediction in every pipeline here (FLUX's true CFG, Wan
    and CogView4 run the negative branch second)."""
    ends, sigmas = [], []
    with analysis.ResidualProbe(pipe.transformer) as probe:

        def callback(p, i, t, kw):
            ends.append(len(probe.records[0]))
            sigmas.append(float(p.scheduler.sigmas[i]))  # the flow time t of step i's forward
            return kw

        bed.sample(pipe, captions, indices, steps=steps, base_seed=base_seed, callback=callback)
    starts = [0, *ends[:-1]]
    rows = [torch.stack([rec[s].cpu() for rec in probe.records], 1).numpy() for s in starts]
    return sigmas, rows


def denoiser_scan(
    pipe,
    captions: Sequence[str],
    *,
    bed: RealBed,
    t_grid=analysis.T_GRID,
    blocks: Sequence[str] | None = None,
    base_seed: int = 0,
    progress: bool = True,
    edits: Sequence[str] = (),
    twins: dict | None = None,
) -> dict:
    """|dh| / |h| and cos(h_in, h_out) per block at the sampling step nearest each t of `t_grid`, on the
    unedited model's trajectories of `captions`. `edits` are validated, `twins` must be empty: without
    D* neither has an error alignment, which is recorded as absent with the reason."""
    for e in edits:
        analysis.edit_string(e, "x")
    if twins:
        raise ValueError(f"twins={sorted(twins)}: a real profile has no trained twins (and no D* to align them to)")
    every = analysis.block_addresses(pipe.transformer)
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    steps = bed.profile.steps
    chunks, sigmas = [], None
    batches = range(0, len(captions), bed.batch_size)
    for k0 in tqdm(batches, desc="denoiser scan (trajectories)", disable=not progress, mininterval=5):
        part = list(captions[k0 : k0 + bed.batch_size])
        sigmas, rows = _trajectory(pipe, bed, part, list(range(k0, k0 + len(part))), steps, base_seed)
        chunks.append(np.stack(rows))  # (steps, B, blocks, 2)
    rows = np.concatenate(chunks, axis=1)
    residuals = []
    for t in t_grid:
        step = int(np.argmin(np.abs(np.asarray(sigmas) - t)))
        for b in blocks:
            r = rows[step, :, every.index(b)]
            (rel, rel_se), (cos, cos_se) = analysis.mean_se(r[:, 0]), analysis.mean_se(r[:, 1])
            residuals.append(
                {"block": b, "t": t, "step": step, "sigma": sigmas[step], "rel_update": rel, "rel_update_se": rel_se}
                | {"cos_in_out": cos, "cos_in_out_se": cos_se}
            )
    return {
        "t_grid": list(t_grid),
        "samples": len(captions),
        "steps": steps,
        "trajectory": "x_t of the unedited model's own sampling (the profile's default), conditional forward",
        "ideal": None,
        "model_error": None,
        "residuals": residuals,
        "alignment": None,
        "alignment_absent": ALIGNMENT_ABSENT,
    }


# ---- generation-level scan ---------------------------------------------------------------------


def _load_partial(out_path, per_set, seed_sets, steps, weights, protocol) -> dict:
    """analysis.load_partial, and only if the dev set and judges are the same (they are part of the numbers)."""
    done = analysis.load_partial(out_path, per_set, seed_sets, steps, weights)
    if done and json.loads(Path(out_path).read_text()).get("protocol") != protocol:
        return {}
    return done


def _record(bed: RealBed, config: tuple[str, str, str], sets: list[dict], base: list[dict]) -> dict:
    edit, block, window = config
    record = {"edit": edit, "block": block, "window": window}
    for key in bed.keys:
        record[f"d_{key}"], record[f"d_{key}_se"] = analysis.mean_se([s[key] - b[key] for s, b in zip(sets, base)])
    perceptual = [np.linalg.norm(s["features"] - b["features"], axis=1).mean() for s, b in zip(sets, base)]
    record["perceptual"], record["perceptual_se"] = analysis.mean_se(perceptual)
    return record


def generation_scan(
    pipe,
    bed: RealBed,
    captions: Sequence[str],
    *,
    steps: int,
    seed_sets: int = 3,
    edits: Sequence[str] = tuple(analysis.EDITS),
    window_edits: Sequence[str] = analysis.WINDOW_EDITS,
    base_seed: int = 0,
    out_path: str | Path | None = None,
    blocks: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """`analysis.generation_scan` on a real profile: the same configs, seeds, records and resumption, with
    the bed's batch size and scores; `protocol` and `labels` say what the numbers are (small N)."""
    from .render import weights_fingerprint

    for e in (*edits, *window_edits):
        analysis.edit_string(e, "x")
    if isinstance(seed_sets, bool) or not isinstance(seed_sets, int) or seed_sets < 3:
        raise ValueError(f"seed_sets={seed_sets!r} is not allowed; allowed: an integer >= 3 (standard errors)")
    per_set = len(captions)
    if not bed.video and per_set < 2:
        raise ValueError(f"per_set={per_set} is not allowed; allowed: an integer >= 2 (FID of a seed set needs 2)")
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    prompts, indices = list(captions) * seed_sets, list(range(per_set * seed_sets))
    reference = bed.reference(captions, seed_sets)
    protocol = bed.protocol(captions)
    weights = weights_fingerprint(pipe)  # a retrained model never reuses old records
    done = _load_partial(out_path, per_set, seed_sets, steps, weights, protocol)

    def scored(spec, active=None):
        images = analysis.sample_with_edit(
            pipe, prompts, indices, spec=spec, steps=steps, active=active, base_seed=base_seed,
            batch_size=bed.batch_size, bed=bed,
        )  # fmt: skip
        return bed.score_sets(images, prompts, reference, per_set)

    base = scored(None)
    result = {
        "samples": len(prompts),
        "seed_sets": seed_sets,
        "per_set": per_set,
        "steps": steps,
        "weights": weights,
        "protocol": protocol,
        "labels": bed.labels(per_set),
        "base": {k: analysis.mean_se([s[k] for s in base])[0] for k in bed.keys},
        "records": list(done.values()),
    }
    todo = [c for c in analysis.generation_configs(blocks, edits, window_edits) if c not in done]
    for edit, block, window in tqdm(todo, desc="generation scan", disable=not progress, mininterval=5):
        active = None if window == "all" else analysis.window_steps(analysis.WINDOWS[window], steps)
        result["records"].append(
            _record(bed, (edit, block, window), scored(analysis.edit_string(edit, block), active), base)
        )
        if out_path is not None:
            analysis.save_partial(out_path, result)
    return result


def rank_candidates(scores: dict, top: int = 8, bed: RealBed | None = None) -> dict:
    """`analysis.rank_candidates` without error alignment: the strong list (edits that improve CLIP-SIM or
    the quality score by > 2 SE) as on the testbeds; the weak list empty, with the reason."""
    no_alignment = {**scores, "denoiser": {**scores["denoiser"], "alignment": []}}
    out = analysis.rank_candidates(no_alignment, top=top, bed=bed)
    out["weak_absent"] = "weak-edit candidates are ranked by error alignment, which needs D*: " + ALIGNMENT_ABSENT
    return out


# ---- cost: the GPU time of the configured scan, from timed forwards ------------------------------


@dataclass
class CostEstimate:
    """Seconds per sample (measured) and the scan's totals. forward_s: one transformer forward; block_s:
    each block's share of it; other_s: the rest of a sample (text encoding, decoding, scheduler) over
    `steps` steps; judge_s: scoring one sample."""

    device: str
    batch_size: int
    steps: int
    nfe_per_step: float
    forward_s: float
    block_s: dict[str, float]
    other_s: float
    judge_s: float
    configs: int
    samples_per_config: int
    denoiser_samples: int
    generation_s: float = 0.0
    denoiser_s: float = 0.0
    timed_steps: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.generation_s + self.denoiser_s

    def to_dict(self) -> dict:
        return asdict(self) | {"total_s": self.total_s}

    def summary(self) -> str:
        h = lambda s: f"{s / 3600:.1f} h" if s >= 360 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"  # noqa: E731
        return (
            f"Estimated GPU time of the configured scan on {self.device}: {h(self.total_s)} "
            f"(generation {h(self.generation_s)}: {self.configs} configs incl. the unedited one x "
            f"{self.samples_per_config} samples x {self.steps} steps x {self.nfe_per_step:g} NFE at "
            f"{self.forward_s * 1e3:.1f} ms per forward per sample, plus {self.other_s:.2f} s decoding/encoding and "
            f"{self.judge_s:.2f} s judging per sample; denoiser scan {h(self.denoiser_s)}: {self.denoiser_samples} "
            f"trajectories). Measured from {self.timed_steps} timed steps at batch {self.batch_size}; "
            + "; ".join(self.notes)
        )


class _Timer:
    """Wall time of every forward of the transformer and of each block (synchronised on CUDA)."""

    def __init__(self, pipe, device: str):
        self.device, self.model = device, pipe.transformer
        self.blocks = get_family(self.model).blocks(self.model)
        self.times: dict[int, list[float]] = {}  # id(module) -> durations
        self._handles, self._start = [], {}

    def __enter__(self):
        for m in (self.model, *self.blocks):
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _pre(self, module, args):
        _sync(self.device)
        self._start[id(module)] = time.perf_counter()

    def _post(self, module, args, output):
        _sync(self.device)
        self.times.setdefault(id(module), []).append(time.perf_counter() - self._start[id(module)])

    def of(self, module) -> list[float]:
        return self.times.get(id(module), [])


def _time_sampling(pipe, bed: RealBed, captions: list[str], timed_steps: int) -> tuple[dict, np.ndarray]:
    """Per-sample seconds of a forward, of each block and of the rest of a sample, from one warm-up
    sampling (1 step: kernels, allocations) and one timed sampling of `timed_steps` steps."""
    indices = list(range(len(captions)))
    noop = lambda p, i, t, kw: kw  # noqa: E731
    with torch.no_grad():
        bed.sample(pipe, captions, indices, steps=1, base_seed=0, callback=noop)
        with _Timer(pipe, bed.device) as timer:
            _sync(bed.device)
            start = time.perf_counter()
            samples = bed.sample(pipe, captions, indices, steps=timed_steps, base_seed=0, callback=noop)
            _sync(bed.device)
            wall = time.perf_counter() - start
    n, calls = len(captions), timer.of(timer.model)
    every = analysis.block_addresses(pipe.transformer)
    return {
        "forward_s": float(np.mean(calls)) / n,
        "nfe_per_step": len(calls) / timed_steps,
        "block_s": {b: float(np.mean(timer.of(m))) / n for b, m in zip(every, timer.blocks)},
        "other_s": max(wall - float(np.sum(calls)), 0.0) / n,
    }, samples


def estimate_gpu_time(
    pipe,
    bed: RealBed,
    *,
    denoiser_samples: int,
    per_set: int,
    seed_sets: int,
    edits: Sequence[str] = tuple(analysis.EDITS),
    window_edits: Sequence[str] = analysis.WINDOW_EDITS,
    blocks: Sequence[str] | None = None,
    timed_steps: int = 2,
) -> CostEstimate:
    """The device time of the configured scan: measured per-sample costs (a forward, each block, the rest
    of a sample, the judges) x the count of configs x samples x steps x NFE. A skip saves its block's
    measured share of a forward at the steps it is active; the other edits are charged a full forward."""
    for e in (*edits, *window_edits):
        analysis.edit_string(e, "x")
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    samples_per_config = per_set * seed_sets
    n = min(bed.batch_size, samples_per_config)
    captions = bed.captions(bed.split, min(n, per_set))
    captions = (captions * n)[:n]
    measured, samples = _time_sampling(pipe, bed, captions, timed_steps)
    bed.per_sample(samples, captions)  # warm-up of the judges
    _sync(bed.device)
    start = time.perf_counter()
    bed.per_sample(samples, captions)
    _sync(bed.device)
    judge_s = (time.perf_counter() - start) / n
    steps, nfe, forward = bed.profile.steps, measured["nfe_per_step"], measured["forward_s"]
    full = steps * nfe * forward + measured["other_s"]
    total = full + judge_s  # the unedited config
    for edit, block, window in analysis.generation_configs(blocks, edits, window_edits):
        active = steps if window == "all" else len(analysis.window_steps(analysis.WINDOWS[window], steps))
        saved = measured["block_s"][block] * nfe * active if edit == "skip" else 0.0
        total += full - saved + judge_s
    return CostEstimate(
        device=torch.cuda.get_device_name() if bed.device.startswith("cuda") else bed.device,
        batch_size=n,
        steps=steps,
        nfe_per_step=nfe,
        forward_s=forward,
        block_s=measured["block_s"],
        other_s=measured["other_s"],
        judge_s=judge_s,
        configs=1 + len(analysis.generation_configs(blocks, edits, window_edits)),
        samples_per_config=samples_per_config,
        denoiser_samples=denoiser_samples,
        generation_s=total * samples_per_config,
        denoiser_s=full * denoiser_samples,
        timed_steps=timed_steps,
        notes=[
            "a skip saves its block's share of a forward, other edits cost a full one",
            "from scratch (a resumed scan skips its finished configs)",
        ],
    )


# ---- figure ------------------------------------------------------------------------------------


def draw_trajectory(axes, denoiser: dict, blocks: Sequence[str], t_grid: Sequence[float]) -> None:
    """The alignment figure of a real profile: a note that the alignment is absent, then |dh| / |h| and
    cos(h_in, h_out) per block x t along the model's own trajectories."""
    tl = [f"{t:g}" for t in t_grid]
    axes[0].text(
        0.5, 0.5, "error alignment: absent\n(no ideal denoiser D*\nfor a real model)", ha="center", va="center"
    )
    axes[0].set_axis_off()
    for ax, key, title in (
        (axes[1], "rel_update", "|dh| / |h| (image stream)"),
        (axes[2], "cos_in_out", "cos(h_in, h_out)"),
    ):
        grid = analysis.table_of(denoiser["residuals"], "block", "t", key, blocks, list(t_grid))
        analysis.heatmap(ax, grid, blocks, tl, title, cmap="viridis", center=False)
