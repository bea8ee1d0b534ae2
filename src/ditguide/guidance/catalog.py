"""The catalogue of guidance methods: `PRESETS`, one small dict per method (formula, cost, note, spec),
with the published defaults where they exist, and the constants those defaults come from.
`ditguide.guidance.presets.preset(name, **overrides)` returns a fresh, validated copy of an entry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# --------------------------------------------------------------------------------------------------
# Presets: one small dict per method, with the published defaults where they exist. Block addresses
# are those of the model the method was published for (given in each entry's note); pass `blocks=` for
# another model. `preset(name, **overrides)` returns a fresh, validated dict.


def _edits(op: str, blocks: Sequence[Any], streams: Sequence[str] | None = None) -> dict:
    edit = {"op": op, "blocks": list(blocks)}
    if streams is not None:
        edit["streams"] = list(streams)
    return {"edits": [edit]}


# PAG / STG-A: within the image tokens an image query attends only to itself; it still attends to the
# text, and text queries are untouched (diffusers' PAGJointAttnProcessor2_0). On Wan, whose
# self-attention holds only the video tokens, this is the identity attention.
def _perturbed_attention(blocks: Sequence[Any]) -> dict:
    return _edits("identity_attn_in_stream", blocks, ["image"])


# EDM2's guidance interval (Kynkaanniemi et al. 2024): CFG only for EDM noise levels in (0.28, 5.42].
EDM2_GUIDANCE_INTERVAL = (0.28, 5.42)
EDM2_SIGMA_DATA = 0.5  # EDM's data standard deviation
CFG_ZERO_STAR_ZERO_INIT = 0.04  # the CFG-Zero* authors' suggestion: zero-init about 4 % of the steps


def edm_sigma_to_flow(sigma: float, sigma_data: float = EDM2_SIGMA_DATA) -> float:
    """The flow-matching sigma t with the same signal-to-noise ratio as EDM's noise level `sigma`.

    EDM: x = y + sigma n with std(y) = sigma_data, so SNR = sigma_data^2 / sigma^2. Flow matching on
    unit-variance latents: x = (1 - t) y + t n with std(y) = 1, so SNR = (1 - t)^2 / t^2. Equal ratios
    give t = sigma / (sigma + sigma_data): 2 sigma / (1 + 2 sigma) at EDM's sigma_data = 0.5.
    """
    return sigma / (sigma + sigma_data)


def guidance_interval_window(sigma_data: float) -> dict:
    lo, hi = (edm_sigma_to_flow(s, sigma_data) for s in EDM2_GUIDANCE_INTERVAL)
    return {"start": lo, "end": hi, "unit": "sigma"}


PRESETS: dict[str, dict] = {
    "off": {
        "formula": "D(cond)",
        "cost": "1 forward per step",
        "note": "no guidance: the conditional model, one forward per step",
        "spec": {"name": "off"},
    },
    "cfg": {
        "formula": "D(uncond) + s (D(cond) - D(uncond))",
        "cost": "2 forwards per step",
        "note": "classifier-free guidance, uncond + s (cond - uncond)",
        "spec": {"name": "cfg", "terms": [{"rule": "cfg", "scale": 5.0}]},
    },
    "cfg_zero_star": {
        "formula": (
            "a D(uncond) + s (D(cond) - a D(uncond)), a = <D(cond), D(uncond)> / |D(uncond)|^2; 0 on the "
            "first 4 % of steps"
        ),
        "cost": "2 per step, 0 on the zero-init steps",
        "note": (
            "CFG-Zero* (Fan et al. 2025): optimized scale; zero-init: the prediction is 0 on the first 4 % of"
            " the steps, at least one (zero_init_fraction = 0.04, the authors' suggestion)"
        ),
        "spec": {
            "name": "cfg_zero_star",
            "zero_init_fraction": CFG_ZERO_STAR_ZERO_INIT,
            "terms": [{"rule": "cfg_zero_star", "scale": 5.0}],
        },
    },
    "apg": {
        "formula": "D(cond) + (s - 1)(orth + eta par) of the momentum-averaged D(cond) - D(uncond), on x0",
        "cost": "2 per step",
        "note": (
            "APG (Sadat et al. 2025): eta 0, momentum -0.5, on the clean-image estimate; norm_threshold is "
            "model-dependent (0 = off)"
        ),
        "spec": {
            "name": "apg",
            "terms": [
                {
                    "rule": "apg",
                    "scale": 5.0,
                    "params": {"eta": 0.0, "norm_threshold": 0.0, "momentum": -0.5, "space": "x0"},
                }
            ],
        },
    },
    "guidance_interval": {
        "formula": "CFG inside the sigma window, D(cond) outside it",
        "cost": "2 inside the window, 1 outside",
        "note": (
            "CFG only for flow sigma in (0.359, 0.916]: EDM2's interval (0.28, 5.42] (Kynkaanniemi et al. "
            "2024) mapped by equal signal-to-noise ratio, t = s / (s + sigma_data), with EDM2's sigma_data = "
            "0.5 and unit-variance latents (edm_sigma_to_flow); sigma_data= restates it, and the window is "
            "tuned per model anyway"
        ),
        "spec": {
            "name": "guidance_interval",
            "terms": [{"rule": "cfg", "scale": 5.0, "interval": guidance_interval_window(EDM2_SIGMA_DATA)}],
        },
    },
    "autoguidance": {
        "formula": "D(cond) + s (D(cond) - D_weak(cond))",
        "cost": "1 + the weak branch (blocks it runs / all blocks; less with prefix sharing)",
        "note": (
            "Karras et al. 2024 with a layer-skipped weak model: D + (w-1)(D - D_weak), scale = w - 1 (w 1.5,"
            " weak = skip single:0: the toy's measured setting)"
        ),
        "spec": {
            "name": "autoguidance",
            "branches": {"weak": {"prompt": "pos", "edits": _edits("skip", ["single:0"])}},
            "terms": [{"rule": "delta", "scale": 0.5, "plus": "cond", "minus": "weak", "name": "autoguidance"}],
        },
    },
    "slg": {
        "formula": "CFG + s (D(cond) - D_skip(cond)) inside the step window",
        "cost": "2, + 1 inside the window (less the skipped blocks and the shared prefix)",
        "note": (
            "SD3.5 skip-layer guidance: cond + (cfg-1)(cond - uncond) + 2.8 (cond - cond_skip[7,8,9]), third "
            "pass on steps 0.01 N < i < 0.2 N, open at both ends as StableDiffusion3Pipeline (SD3.5 Medium)"
        ),
        "spec": {
            "name": "slg",
            "branches": {"skip": {"prompt": "pos", "edits": _edits("skip", ["blocks:7", "blocks:8", "blocks:9"])}},
            "terms": [
                {"rule": "cfg", "scale": 4.5},
                {
                    "rule": "delta",
                    "scale": 2.8,
                    "plus": "cond",
                    "minus": "skip",
                    "interval": {"start": 0.01, "end": 0.2, "unit": "step", "open": True},
                    "name": "slg",
                },
            ],
        },
    },
    "slg_weak_negative": {
        "formula": "D_weak(uncond) + s (D(cond) - D_weak(uncond)) inside the window, CFG outside",
        "cost": "2 (the negative runs fewer blocks inside the window)",
        "note": (
            "Wan community 'SLG' (Wan2GP, kijai): CFG whose negative branch skips block 9 on 10%-90% of the "
            "steps; no extra pass (Wan2.1)"
        ),
        "spec": {
            "name": "slg_weak_negative",
            "branches": {"uncond_weak": {"prompt": "neg", "edits": _edits("skip", ["blocks:9"])}},
            "terms": [
                {"rule": "cfg", "scale": 5.0, "interval": [0.0, 0.1]},
                {"rule": "cfg", "scale": 5.0, "minus": "uncond_weak", "interval": [0.1, 0.9], "name": "weak_negative"},
                {"rule": "cfg", "scale": 5.0, "interval": [0.9, 1.0]},
            ],
        },
    },
    "stg": {
        "formula": "CFG + s (D(cond) - D_skip(cond))",
        "cost": "3 (the perturbed branch skips a block; prefix shared with cond)",
        "note": "STG-R (Hyung et al. 2025): the weak model skips block 2, scale 2 (Wan2.1); stg_a is STG-A",
        "spec": {
            "name": "stg",
            "branches": {"perturbed": {"prompt": "pos", "edits": _edits("skip", ["blocks:2"])}},
            "terms": [
                {"rule": "cfg", "scale": 5.0},
                {"rule": "delta", "scale": 2.0, "plus": "cond", "minus": "perturbed", "name": "stg"},
            ],
        },
    },
    "stg_a": {
        "formula": "CFG + s (D(cond) - D_idattn(cond))",
        "cost": "3 (prefix shared with cond)",
        "note": "STG-A (Hyung et al. 2025): identity attention in block 2, scale 2 (Wan2.1), perturbed as pag",
        "spec": {
            "name": "stg_a",
            "branches": {"perturbed": {"prompt": "pos", "edits": _perturbed_attention(["blocks:2"])}},
            "terms": [
                {"rule": "cfg", "scale": 5.0},
                {"rule": "delta", "scale": 2.0, "plus": "cond", "minus": "perturbed", "name": "stg_a"},
            ],
        },
    },
    "pag": {
        "formula": "CFG + s (D(cond) - D_idattn(cond))",
        "cost": "3 (prefix shared with cond)",
        "note": (
            "PAG (Ahn et al. 2024), scale 3, block 1 (diffusers' SD3 PAG default layer): image queries attend"
            " to themselves among the image tokens and still to the text, text queries untouched "
            "(identity_attn_in_stream@image = diffusers' PAGJointAttnProcessor2_0; the same mask on "
            "Flux/CogView4 joint attention; identity attention on Wan)"
        ),
        "spec": {
            "name": "pag",
            "branches": {"perturbed": {"prompt": "pos", "edits": _perturbed_attention(["blocks:1"])}},
            "terms": [
                {"rule": "cfg", "scale": 5.0},
                {"rule": "delta", "scale": 3.0, "plus": "cond", "minus": "perturbed", "name": "pag"},
            ],
        },
    },
    "strong_weak": {
        "formula": "CFG + s (D_strong(cond) - D_weak(cond))",
        "cost": "4 (2 for CFG + strong + weak; prefixes shared with cond)",
        "note": (
            "ours: D + (cfg-1)(D - D_uncond) + w (D_strong - D_weak); strong and weak are edit specs (toy "
            "example: strong amplifies the residual update of single:3 by 1.5, weak removes single:0); a "
            "strong edit must strengthen (scale alpha > 1, repeat, temperature tau < 1)"
        ),
        "spec": {
            "name": "strong_weak",
            "branches": {
                "strong": {
                    "prompt": "pos",
                    "edits": {"edits": [{"op": "scale", "blocks": ["single:3"], "alpha": 1.5}]},
                },
                "weak": {"prompt": "pos", "edits": _edits("skip", ["single:0"])},
            },
            "terms": [
                {"rule": "cfg", "scale": 5.0},
                {"rule": "delta", "scale": 1.0, "plus": "strong", "minus": "weak", "name": "strong_weak"},
            ],
        },
    },
    # The CFG variants diffusers ships as guiders; each rule reproduces diffusers' guider (tests).
    "tcfg": {
        "formula": "u' + s (D(cond) - u'), u' = D(uncond) projected on the first right singular vector of [D(cond); D(uncond)]",
        "cost": "2 per step",
        "note": (
            "tangential CFG (Kwon et al. 2025), diffusers' TangentialClassifierFreeGuidance: the negative keeps only "
            "its component along the dominant singular direction of the pair (SVD per sample, float32); scale as cfg"
        ),
        "spec": {"name": "tcfg", "terms": [{"rule": "tcfg", "scale": 5.0}]},
    },
    "fdg": {
        "formula": "pyrup-sum over Laplacian levels l of D_l(uncond) + s_l (D_l(cond) - D_l(uncond)); s_0 = s (highest frequency)",
        "cost": "2 per step",
        "note": (
            "frequency-decoupled guidance (Sadat et al. 2025), diffusers' FrequencyDecoupledGuidance: CFG per level "
            "of a 2-level Laplacian pyramid, 10 on the high and 5 on the low frequencies (the paper's SDXL setting, "
            "diffusers' default); needs (batch, channels, height, width) predictions (SD3, CogView4), not Flux's "
            "packed tokens or Wan's frames"
        ),
        "spec": {"name": "fdg", "terms": [{"rule": "fdg", "scale": 10.0, "params": {"low_scales": [5.0]}}]},
    },
    "magnitude_aware": {
        "formula": "D(uncond) + s' (D(cond) - D(uncond)), s' = 1 + (s - 1) exp(-alpha |D(cond) - D(uncond)| / |D(uncond)|)",
        "cost": "2 per step",
        "note": (
            "magnitude-aware guidance (MAMBO-G, Zhang et al. 2025), diffusers' MagnitudeAwareGuidance: the CFG scale "
            "shrinks per sample where the update is large; s 10, alpha 8 (diffusers' defaults)"
        ),
        "spec": {
            "name": "magnitude_aware",
            "terms": [{"rule": "magnitude_aware", "scale": 10.0, "params": {"alpha": 8.0}}],
        },
    },
}
