"""ditguide's guidance as diffusers guiders, for diffusers' modular pipelines (diffusers 0.42).

    from ditguide.diffusers_guiders import StrongWeakGuidance
    guider = StrongWeakGuidance(guidance_scale=5.0, strong_weak_scale=1.0, strong="scale(1.5):blocks:20", weak="skip:blocks:3")
    pipe.update_components(guider=guider)       # any modular pipeline whose denoise step takes a guider (Wan, SD3, ...)

A modular pipeline's denoise step asks its guider, at every step, for the batches to run
(`prepare_inputs` / `prepare_inputs_from_block_state`), calls `guider.prepare_models(transformer)`
before and `guider.cleanup_models(transformer)` after each batch's forward, and combines the
predictions with `guider(batches)`. These guiders map that protocol onto a ditguide `GuidanceSpec`:

- one batch per branch the spec needs at this step (`spec.branches_needed`), with the prompt's
  inputs (tuple index 0) or the negative prompt's (index 1), identified as `pred_<branch>`;
- `prepare_models` attaches the branch's block edits with ditguide's edit engine
  (`ditguide.edits.attach_edits`: exact stream layouts, Flux single blocks and SD3's last block
  included, which diffusers' own layer skip gets wrong) and `cleanup_models` removes them, so the
  model is exactly restored between batches;
- `forward` is `GuidanceSpec.combine`, the same function `GuidedDenoiser` calls, so for the same
  spec, model and inputs the prediction is the one `GuidedDenoiser` computes (tests check it bit for
  bit on a Wan modular pipeline).

Classes: `SpecGuidance` (any spec or preset name), `StrongWeakGuidance` (ours: CFG + w (D_strong -
D_weak)) and `LayerEditAutoGuidance` (Karras et al.'s autoguidance with a layer-edited weak model).

What differs from `GuidedDenoiser`: the modular loop runs one full forward per batch, so branches
share no block prefix (cost: each branch's own blocks, see `ditguide.guidance.cost`); the guider sees
the step index but not sigma or the noisy latents, so specs with sigma-unit intervals or APG on the
clean-image estimate (space "x0") are refused; `start` / `stop` are diffusers' guider window
(guidance on steps int(start N) <= i < int(stop N), the conditional prediction elsewhere).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import BaseGuidance
from diffusers.guiders.guider_utils import GuiderOutput

from .edits import EditError, EditSpec, attach_edits, compile_plans
from .guidance import GuidanceSpec, GuidanceSpecError, StepInfo, check_number, preset

PREFIX = "pred_"  # batch identifiers are "pred_<branch>", as diffusers' "pred_cond" / "pred_uncond"
TUPLE_INDEX = {"pos": 0, "neg": 1}  # which side of a (prompt, negative prompt) input field a branch reads


class _SpecGuidance(BaseGuidance):
    """The diffusers guider protocol over a GuidanceSpec; the public classes set the spec."""

    _input_predictions = ["pred_cond", "pred_uncond"]  # replaced per instance by the spec's branches

    def _setup(self, spec: Any, start: float, stop: float, enabled: bool) -> None:
        self.spec = _guider_spec(spec)
        self._input_predictions = [PREFIX + name for name in self.spec.used_branches]
        super().__init__(start, stop, enabled)
        self._batches: list[str] = []
        self._handle = None
        self._rule_state: dict = {}
        self._last_step: int | None = None
        self._validated: set[int] = set()

    # ---- which branches run at this step ----------------------------------------------------------

    def _in_window(self) -> bool:
        if self._num_inference_steps is None:
            return True
        n = self._num_inference_steps
        return int(self._start * n) <= self._step < int(self._stop * n)

    def _step_info(self) -> StepInfo:
        if self._step is None or self._num_inference_steps is None:
            return StepInfo(0, 1)  # called outside a denoising loop: one step
        return StepInfo(int(self._step), int(self._num_inference_steps))

    def _branches_now(self) -> list[str]:
        if not self._enabled or not self.spec.terms:
            return [self.spec.base]
        if self._step is None or self._num_inference_steps is None:
            return self.spec.used_branches  # before the loop: every branch the run may need
        if not self._in_window():
            return [self.spec.base]
        # CFG-Zero*'s zero-init steps need no branch; the base runs so that the output has its shape.
        return self.spec.branches_needed(self._step_info()) or [self.spec.base]

    @property
    def num_conditions(self) -> int:
        return len(self._branches_now())

    @property
    def is_conditional(self) -> bool:
        index = self._count_prepared - 1
        name = self._batches[index] if 0 <= index < len(self._batches) else self.spec.base
        return self.spec.branches[name].prompt == "pos"

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        if self._last_step is None or step <= self._last_step:
            self._rule_state = {}  # a new run: APG's momentum starts again
        self._last_step = step
        super().set_state(step, num_inference_steps, timestep)

    # ---- batches ----------------------------------------------------------------------------------

    def prepare_inputs(self, data: dict[str, Any]) -> list:
        self._batches = self._branches_now()
        self._check_negative({k: v for k, v in data.items()}, "prepare_inputs", lambda v: isinstance(v, tuple))
        return [self._prepare_batch(data, TUPLE_INDEX[self.spec.branches[n].prompt], PREFIX + n) for n in self._batches]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, str | tuple[str, str]]) -> list:
        self._batches = self._branches_now()

        def has_negative(value: Any) -> bool:
            return isinstance(value, tuple) and getattr(data, value[1], None) is not None

        self._check_negative(input_fields, "input_fields", has_negative)
        return [
            self._prepare_batch_from_block_state(
                input_fields, data, TUPLE_INDEX[self.spec.branches[n].prompt], PREFIX + n
            )
            for n in self._batches
        ]

    def _check_negative(self, fields: Mapping[str, Any], where: str, has_negative) -> None:
        users = [n for n in self._batches if self.spec.branches[n].prompt == "neg"]
        if users and not any(has_negative(v) for v in fields.values()):
            raise GuidanceSpecError(
                f"{type(self).__name__}: branches {users} run on the negative prompt, but the pipeline gave no "
                f"negative inputs ({where}: {sorted(fields)}); pass negative_prompt_embeds (or a negative_prompt "
                "the pipeline encodes), or use a spec without negative-prompt branches"
            )

    # ---- the branch's block edits around its forward ---------------------------------------------

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        if id(denoiser) not in self._validated:
            self._validate(denoiser)
        index = self._count_prepared - 1
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if index < len(self._batches):
            edits = self.spec.branches[self._batches[index]].edits
            if edits:
                self._handle = attach_edits(denoiser, edits)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _validate(self, denoiser: torch.nn.Module) -> None:
        """Every branch's edits against the model, before its first forward (one message naming the branch)."""
        for name in self.spec.used_branches:
            try:
                compile_plans(EditSpec.parse(self.spec.branches[name].edits), denoiser)
            except ValueError as err:
                raise EditError(f"{type(self).__name__}: branches.{name}.edits: {err}") from None
        self._validated.add(id(denoiser))

    # ---- combining --------------------------------------------------------------------------------

    def forward(self, **predictions: torch.Tensor) -> GuiderOutput:
        unknown = [k for k in predictions if not k.startswith(PREFIX) or k[len(PREFIX) :] not in self.spec.branches]
        if unknown:
            raise GuidanceSpecError(
                f"{type(self).__name__}: unknown predictions {unknown}; expected {self._input_predictions}"
            )
        preds = {k[len(PREFIX) :]: v for k, v in predictions.items()}
        base = preds[self.spec.base]
        if not (self._enabled and self.spec.terms and self._in_window()):
            out = base  # guidance off at this step: exactly the conditional prediction
        else:
            out = self.spec.combine(preds, self._step_info(), self._rule_state)
            out = torch.zeros_like(base) if out is None else out  # CFG-Zero*'s zero-init
        return GuiderOutput(pred=out, pred_cond=preds.get("cond"), pred_uncond=preds.get("uncond"))

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "branches": list(self._batches)}


def _guider_spec(spec: Any) -> GuidanceSpec:
    if isinstance(spec, str):
        spec = preset(spec)
    spec = GuidanceSpec.from_dict(copy.deepcopy(spec) if isinstance(spec, Mapping) else spec)
    for i, term in enumerate(spec.terms):
        if term.interval.unit == "sigma":
            raise GuidanceSpecError(
                f"terms[{i}].interval.unit = 'sigma': a diffusers guider sees the step index, not sigma; give the "
                "interval in steps (unit 'step'), or use GuidedDenoiser (ditguide.pipelines.run_guided)"
            )
        if term.rule == "apg" and dict(term.params).get("space") == "x0":
            raise GuidanceSpecError(
                f"terms[{i}].params.space = 'x0': a diffusers guider does not see the noisy latents that APG on the "
                "clean-image estimate needs; use space 'pred', or GuidedDenoiser"
            )
    return spec


def _drop_zero_terms(d: dict) -> dict:
    """Remove additive terms of scale 0 and the branches only they read (guidance off costs no forward)."""
    d["terms"] = [t for t in d.get("terms", []) if not (t["rule"] == "delta" and t["scale"] == 0)]
    used = {b for t in d["terms"] for b in (t.get("plus", "cond"), t.get("minus", "uncond"))}
    d["branches"] = {k: v for k, v in d.get("branches", {}).items() if k in used}
    return d


def _window(start: float, stop: float, where: str) -> list[float] | None:
    a = check_number(start, f"{where}_start", lo=0.0, hi=1.0, allowed="in [0, 1] (fraction of the steps)")
    b = check_number(stop, f"{where}_stop", lo=a, hi=1.0, allowed=f"in [{where}_start, 1] (fraction of the steps)")
    return None if (a, b) == (0.0, 1.0) else [a, b]


class SpecGuidance(_SpecGuidance):
    """Any ditguide guidance spec (dict form) or preset name as a diffusers guider.

    spec: a GuidanceSpec dict (as in params.yaml), or a preset name ("cfg", "slg", "pag", "strong_weak",
        "autoguidance", ...) with its published defaults; block addresses must exist in the model the
        pipeline runs (checked before the first forward, with the valid addresses in the message).
    start, stop: diffusers' guider window (fractions of the steps; outside it, the conditional prediction).
    """

    @register_to_config
    def __init__(self, spec: dict | str | None = None, start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        self._setup(spec, start, stop, enabled)


class StrongWeakGuidance(_SpecGuidance):
    """Ours: `D_uncond + s (D - D_uncond) + w (D_strong - D_weak)` (preset "strong_weak").

    guidance_scale: the CFG scale s (1: no CFG term, and no negative-prompt forward).
    strong_weak_scale: w (0: no strong/weak term; with guidance_scale 1 this is guidance off, one forward).
    strong, weak: edit specs of the two branches (ditguide.edits strings or dicts, e.g.
        "scale(1.5):single:3", "skip:single:0"); strong must strengthen (scale alpha > 1, repeat,
        temperature tau < 1). Block addresses are the model's ("single:3" for Flux, "blocks:3" for
        Wan, CogView4 and SD3).
    strong_weak_start, strong_weak_stop: the steps (fractions, [start, stop)) on which the w term is active.
    start, stop: diffusers' guider window for the whole guidance.
    """

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 5.0,
        strong_weak_scale: float = 1.0,
        strong: Any = "scale(1.5):single:3",
        weak: Any = "skip:single:0",
        strong_weak_start: float = 0.0,
        strong_weak_stop: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        s = check_number(guidance_scale, "guidance_scale", lo=0.0, allowed="finite and >= 0 (1: no CFG term)")
        w = check_number(
            strong_weak_scale, "strong_weak_scale", lo=0.0, allowed="finite and >= 0 (0: no strong/weak term)"
        )
        window = _window(strong_weak_start, strong_weak_stop, "strong_weak")
        d = preset("strong_weak", scale=w, cfg_scale=s, strong=strong, weak=weak, interval=window)
        self._setup(_drop_zero_terms(d), start, stop, enabled)


class LayerEditAutoGuidance(_SpecGuidance):
    """Autoguidance (Karras et al. 2024) with a layer-edited weak model: `D + (w - 1)(D - D_weak)`.

    Karras et al.'s `D_weak + w (D - D_weak)` written around D (preset "autoguidance", scale w - 1).
    guidance_scale: w (1: off, one forward per step).
    weak: the weak branch's edit spec (e.g. "skip:single:0", "skip:blocks:1,blocks:2").
    weak_prompt: "pos" (Karras et al.: the weak model sees the same prompt) or "neg" (diffusers'
        AutoGuidance pairs the weakened model with the negative prompt).
    cfg_scale: an optional CFG term on top (1: none).
    auto_guidance_start, auto_guidance_stop: the steps (fractions, [start, stop)) of the w term.
    start, stop: diffusers' guider window for the whole guidance.
    """

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 1.5,
        weak: Any = "skip:single:0",
        weak_prompt: str = "pos",
        cfg_scale: float = 1.0,
        auto_guidance_start: float = 0.0,
        auto_guidance_stop: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        w = check_number(
            guidance_scale, "guidance_scale", lo=1.0, allowed="finite and >= 1 (Karras et al.'s w; 1: off)"
        )
        s = check_number(cfg_scale, "cfg_scale", lo=0.0, allowed="finite and >= 0 (1: no CFG term)")
        if weak_prompt not in TUPLE_INDEX:
            raise GuidanceSpecError(
                f"weak_prompt = {weak_prompt!r}: must be 'pos' (Karras et al.) or 'neg' (diffusers' AutoGuidance)"
            )
        window = _window(auto_guidance_start, auto_guidance_stop, "auto_guidance")
        d = preset("autoguidance", scale=w - 1.0, weak=weak, cfg_scale=s, interval=window)
        d["branches"]["weak"]["prompt"] = weak_prompt
        self._setup(_drop_zero_terms(d), start, stop, enabled)
