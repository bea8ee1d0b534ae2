"""Evaluation runs that the notebooks call: sample each method on shared seeds, score, tabulate."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .profiles import ConfigError, load_pipeline, load_profile
from .render import PipelineRenderer
from .style import latex_table


@dataclass
class T2IResult:
    metrics: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, H, W) in [0, 1]
    labels: np.ndarray | None = None

    def table(self) -> str:
        rows = [
            (
                name,
                "-" if m["cfg_scale"] is None else m["cfg_scale"],
                m["nfe_per_step"],
                m["fd"],
                m["clip"],
                m["accuracy"],
            )
            for name, m in self.metrics["methods"].items()
        ]
        floor = self.metrics["floor"]["fd_real_halves"]
        return latex_table(
            rows,
            ["method", "CFG scale", "NFE/step", "toy FD $\\downarrow$", "toy CLIP $\\uparrow$", "accuracy $\\uparrow$"],
            caption=(
                f"Toy text-to-image evaluation ({self.metrics['count']} samples per method, "
                f"{self.metrics['steps']} Euler steps). Real-vs-real FD floor: {floor:.3f}."
            ),
            label=f"tab:t2i_{self.metrics['profile']}",
            bold_best={3: "min", 4: "max", 5: "max"},
        )


def evaluate_t2i_toy(
    profile: str = "toy",
    *,
    samples_per_class: int = 100,
    batch_size: int = 250,
    base_seed: int = 0,
    cfg_scales: list[float] = (),
    specs: list[str] | None = None,
    params="params.yaml",
    judge_path: str = "data/toy/judge.safetensors",
    runs_dir: str = "runs",
) -> T2IResult:
    """No guidance, the profile's default CFG, a CFG sweep and the profile's guidance specs.

    Every method goes through the same path as a real model: `generate` writes PNGs (resumable;
    the folder name carries a hash of the renderer's description and the prompts, so a retrained
    model or a changed spec never reuses old samples), then the toy judge reads them back as `Samples`.
    """
    from .evaluation_real import run_dir
    from .generate import generate
    from .metrics import Samples
    from .metrics.toy import ToyJudgeMetric, balanced_labels, heldout_reference, real_floor
    from .profiles import load_params
    from .render import check_against_config, guidance_spec
    from .toy.data import prompt_for
    from .toy.judge import load_judge

    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    if prof.family != "toy":
        raise ConfigError(
            f"profile={profile!r} is not allowed here: it is family {prof.family!r}, and the evaluate_t2i "
            "stage evaluates toy-family profiles; list real T2I profiles in image_profiles (params.yaml) "
            "for the evaluate_t2i_real stage"
        )
    if not (isinstance(samples_per_class, int) and samples_per_class >= 1):
        raise ValueError(f"samples_per_class must be an integer >= 1, got {samples_per_class!r}")
    for s in cfg_scales:
        if not np.isfinite(s) or s < 0:
            raise ValueError(f"cfg_scales must be finite numbers >= 0, got {s!r}")
    specs = list(prof.extra.get("guidance") or {}) if specs is None else list(specs)
    guided = {name: guidance_spec(prof, name) for name in specs}  # validate every spec before sampling
    count = 10 * samples_per_class
    labels = balanced_labels(count)
    prompts = [prompt_for(y) for y in labels]
    # Every spec's blocks and the prompts against the model's config, before any weights load.
    check_against_config(prof, guided, list(dict.fromkeys(prompts)))
    judge = load_judge(judge_path)
    pipe = load_pipeline(prof)
    metric = ToyJudgeMetric(judge, heldout_reference(judge))

    renderers = {
        "none": PipelineRenderer(prof, pipe, cfg_scale=1.0, base_seed=base_seed),
        "cfg": PipelineRenderer(prof, pipe, base_seed=base_seed),
    }
    for s in cfg_scales:
        if float(s) != prof.cfg_scale:
            renderers[f"cfg@{s:g}"] = PipelineRenderer(prof, pipe, cfg_scale=float(s), base_seed=base_seed)
    for name, spec in guided.items():
        renderers[name] = PipelineRenderer(prof, pipe, guidance=spec, base_seed=base_seed)
    for renderer in renderers.values():
        renderer.validate(prompts)  # every spec against the model before the first method renders

    result = T2IResult(
        metrics={
            "profile": profile,
            "count": count,
            "steps": prof.steps,
            "base_seed": base_seed,
            "reference": "held-out split (judge features)",
            "floor": real_floor(judge),
            "methods": {},
        },
        labels=labels,
    )
    for name, renderer in renderers.items():
        out = run_dir(runs_dir, prof, "t2i", name, renderer, prompts, samples_per_prompt=1)
        generate(renderer, prompts, out, batch_size=batch_size, base_seed=base_seed)
        samples = Samples.from_dir(out, count)
        judged = metric(samples)
        entry = {
            "fd": judged.value,
            "clip": judged.details["clip"],
            "accuracy": judged.details["accuracy"],
            "count": judged.n,
        }
        entry.update(nfe_per_step=renderer.nfe_per_step(prompts[0]))
        if renderer.guidance is None:
            entry.update(cfg_scale=renderer.cfg_scale)
        else:
            entry.update(cfg_scale=None, spec=renderer.guidance.to_dict())
        result.metrics["methods"][name] = entry
        result.images[name] = np.stack([samples.image(i)[..., 0] for i in range(count)]).astype(np.float32) / 255.0
    return result


def sample_grid(images: dict[str, np.ndarray], labels: np.ndarray, methods: list[str], per_class: int = 8):
    """One panel per method; rows are digits 0-9, columns the first `per_class` seeds of each digit."""
    import matplotlib.pyplot as plt

    from .style import FULL

    fig, axes = plt.subplots(1, len(methods), figsize=(FULL * len(methods) / 3, FULL / 3 * 1.15), squeeze=False)
    for ax, name in zip(axes[0], methods):
        imgs = images[name]
        rows = []
        for digit in range(10):
            picked = imgs[np.flatnonzero(labels == digit)[:per_class]]
            rows.append(np.concatenate(list(np.pad(picked, ((0, 0), (1, 1), (1, 1)), constant_values=0.0)), axis=1))
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
