"""`RealBed`: what the layer map needs from a real profile, as a testbed adapter gives it for a testbed
(dev captions, sampling at the profile's defaults, scores per seed set, what the numbers are), with its
options (layer_analysis.real in params.yaml) and `bed_for`, the bed of any profile."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..profiles import ConfigError, Profile
from .real_judges import TINY_INCEPTION_ID, Judges, inception_features, load_judges

OPTIONS = ("data_dir", "resolution", "prompts", "per_set", "batch_size", "device", "vbench_python")
FRAMES_JUDGED = 8  # evenly spaced frames of a video go through CLIP and DINOv2 (all frames: flickering)


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
    from ..testbeds.beds import bed_for as testbed_for

    check_options(real)
    return testbed_for(profile) if profile.family == "toy" else RealBed(profile, **real)


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def model_problem(profile: Profile) -> str | None:
    """Why the profile's weights cannot load here, from the local folder or the hub cache (offline, in a
    moment), or None. `profiles.load_pipeline` still says so itself if files are missing inside the cache."""
    from ..profiles import download_hint

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
        from .. import coco

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
        from ..metrics.vbench_score import standard_prompt_suite

        return standard_prompt_suite(self.vbench_python)

    def check_inputs(self, split: str) -> None:
        """The weights and the dev set, before anything loads: one error listing every missing piece."""
        from ..coco import MissingDataError
        from ..metrics.fid import INCEPTION_ID, MissingWeightsError
        from ..metrics.vbench_score import VBenchEnvironmentError

        weights = model_problem(self.profile)
        problems = [weights] if weights else []
        try:
            if self.video:
                from ..benchmark.vbench import read_suite

                read_suite(self._suite_path())
            else:
                from ..benchmark.coco2017 import check_coco

                check_coco(self.data_dir, split, self.resolution, TINY_INCEPTION_ID if self.tiny else INCEPTION_ID)
        except (FileNotFoundError, VBenchEnvironmentError) as err:
            problems.append(str(err).strip())
        if problems:
            what = " ".join(f"({k + 1}) {p}" for k, p in enumerate(problems))
            error = MissingWeightsError if weights else MissingDataError
            raise error(f"the layer map of profile {self.profile.name!r} cannot run on this machine: {what}")

    def load_pipeline(self, split: str = "dev"):
        """Check the inputs, load the judges (missing weights fail now), then the pipeline on `device`."""
        from ..profiles import load_pipeline

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
            from ..benchmark.vbench import read_suite

            if split not in ("dev", "test"):
                raise ValueError(f"split={split!r} is not allowed; allowed: dev, test")
            pool = list(dict.fromkeys(r["prompt_en"] for r in read_suite(self._suite_path())))
            pool = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))]
            pool = pool if split == "dev" else pool[::-1]
            where = f"the prompt suite {self._suite_path()}"
        else:
            from ..coco import read_split

            pool = [r["caption"] for r in read_split(self.data_dir, split)]
            where = f"the COCO {split} split in {self.data_dir}"
        if count > len(pool):
            raise ValueError(
                f"{count} captions requested but {where} has {len(pool)}; lower per_set / denoiser_samples"
            )
        return pool[:count]

    def sample(self, pipe, captions, indices, *, steps: int, base_seed: int, callback) -> np.ndarray:
        """uint8 (N, H, W, 3) images or (N, F, H, W, 3) videos at the profile's default sampling, seeded per index."""
        from ..render import PipelineRenderer, to_uint8

        # The renderer's call arguments: the one place where a profile's sampling defaults meet a pipeline
        # call (size, own CFG or distilled guidance, negative prompt, per-sample generators, np output).
        kwargs = PipelineRenderer(self.profile, pipe, base_seed=base_seed, steps=steps)._call_kwargs(indices)
        out = pipe(prompt=list(captions), num_inference_steps=steps, callback_on_step_end=callback, **kwargs)
        return to_uint8(np.asarray(out.frames if self.video else out.images))

    def reference(self, captions: Sequence[str], seed: int):
        """T2I: the FID features of the whole COCO dev reference (cached beside it, computed once); T2V: None."""
        if self.video:
            return None
        from ..coco import reference_dir
        from ..metrics.fid import INCEPTION_ID, cache_reference_features, load_reference_features

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
        from ..metrics.fid import fid_from_features

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
