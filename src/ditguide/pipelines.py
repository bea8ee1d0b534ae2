"""Driving the classic diffusers pipelines under guidance, unmodified.

Every pipeline is driven the same way: its own CFG is switched off (one transformer call per step,
with the conditional inputs), `pipe.transformer` is replaced by a GuidedDenoiser holding the
negative conditioning, and the pipeline's loop, scheduler and decoding run as they are.

| pipeline                  | its CFG switch (set off)  | negative inputs -> transformer keywords                       |
|---------------------------|---------------------------|---------------------------------------------------------------|
| FluxPipeline              | true_cfg_scale = 1        | negative_prompt_embeds -> encoder_hidden_states,              |
|                           |                           | negative_pooled_prompt_embeds -> pooled_projections, txt_ids  |
| CogView4Pipeline          | guidance_scale = 1        | negative_prompt_embeds -> encoder_hidden_states               |
| WanPipeline               | guidance_scale = 1        | negative_prompt_embeds -> encoder_hidden_states               |
| StableDiffusion3Pipeline  | guidance_scale = 1        | negative_prompt_embeds -> encoder_hidden_states,              |
|                           |                           | negative_pooled_prompt_embeds -> pooled_projections           |
| ToyPipeline               | guidance_scale = 1        | as Flux                                                       |

Flux's `guidance_scale` is the distilled-guidance embedding, not CFG, and is passed through.

A pipeline that runs its own CFG under a spec (e.g. `guided(pipe, spec)` and then
`pipe(guidance_scale=3)`) would be guided twice. Every driver catches it at the first transformer
call of that run: SD3, CogView4 and Wan through their `do_classifier_free_guidance` property (SD3
stacks [negative, positive] into one call that would otherwise pass for a batch of positives), Flux
and the toy, which keep the switch in a local variable, through their 'uncond' cache context.
Wan 2.2's two-stage pipelines (`transformer_2`) are refused: only `pipe.transformer` would be guided.

    out, cost = run_guided(pipe, preset("cfg", scale=4.0), prompt_embeds=pe, pooled_prompt_embeds=pp,
                           negative_prompt_embeds=ne, negative_pooled_prompt_embeds=np_, num_inference_steps=28)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .denoiser import GuidanceError, GuidedDenoiser
from .guidance import GuidanceSpec


@dataclass(frozen=True)
class Driver:
    """How one pipeline class is driven."""

    family: str
    cfg_arg: str  # the pipeline's own CFG scale argument
    negative: tuple[tuple[str, str], ...]  # (pipeline argument, transformer keyword)
    text_ids: bool  # the transformer takes Flux text position ids (zeros(text tokens, 3))
    batch_arg: str | None = "num_images_per_prompt"  # samples per prompt (None: one)
    # The pipeline property that is true while a call runs its own CFG (None: the pipeline keeps the
    # switch in a local variable, and its 'uncond' cache context is the signal).
    cfg_flag: str | None = "do_classifier_free_guidance"

    def negative_names(self) -> list[str]:
        return [a for a, _ in self.negative]


_EMBEDS = (("negative_prompt_embeds", "encoder_hidden_states"),)
_POOLED = (("negative_pooled_prompt_embeds", "pooled_projections"),)
DRIVERS: dict[str, Driver] = {
    "FluxPipeline": Driver("flux", "true_cfg_scale", _EMBEDS + _POOLED, True, cfg_flag=None),
    "CogView4Pipeline": Driver("cogview4", "guidance_scale", _EMBEDS, False),
    "WanPipeline": Driver("wan", "guidance_scale", _EMBEDS, False, "num_videos_per_prompt"),
    "StableDiffusion3Pipeline": Driver("sd3", "guidance_scale", _EMBEDS + _POOLED, False),
    "ToyPipeline": Driver("toy", "guidance_scale", _EMBEDS + _POOLED, True, None, cfg_flag=None),
}


def driver_for(pipe: Any) -> Driver:
    for cls in type(pipe).__mro__:
        if cls.__name__ in DRIVERS:
            return DRIVERS[cls.__name__]
    raise GuidanceError(f"no guidance driver for pipeline class {type(pipe).__name__}; supported: {sorted(DRIVERS)}")


def _encode_negative(pipe: Any, driver: Driver, negative_prompt: str | list[str], batch: int, call: dict) -> dict:
    """Negative embeddings from text with the pipeline's own encoder (as its CFG would encode them)."""
    texts = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
    device = pipe._execution_device
    n = int(call.get(driver.batch_arg) or 1) if driver.batch_arg else 1
    msl = {k: call[k] for k in ("max_sequence_length",) if k in call}
    if driver.family == "toy":
        pe, pooled = pipe.encode_prompt(texts)
        return {"negative_prompt_embeds": pe, "negative_pooled_prompt_embeds": pooled}
    if getattr(pipe, "text_encoder", None) is None:
        raise GuidanceError(
            f"the guidance spec uses the negative prompt but {type(pipe).__name__} has no text encoder: pass "
            f"{' and '.join(driver.negative_names())}"
        )
    if driver.family == "flux":
        pe, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, device=device, num_images_per_prompt=n, **msl)
        return {"negative_prompt_embeds": pe, "negative_pooled_prompt_embeds": pooled}
    if driver.family == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=n,
            do_classifier_free_guidance=False,
            **msl,
        )
        return {"negative_prompt_embeds": pe, "negative_pooled_prompt_embeds": pooled}
    if driver.family == "cogview4":
        pe, _ = pipe.encode_prompt(
            texts, None, do_classifier_free_guidance=False, num_images_per_prompt=n, device=device, **msl
        )
        return {"negative_prompt_embeds": pe}
    pe, _ = pipe.encode_prompt(
        prompt=texts, do_classifier_free_guidance=False, num_videos_per_prompt=n, device=device, **msl
    )
    return {"negative_prompt_embeds": pe}


def _batch_of(call: dict) -> int:
    if call.get("prompt_embeds") is not None:
        return call["prompt_embeds"].shape[0]
    prompt = call.get("prompt")
    return 1 if isinstance(prompt, str) else len(prompt)


def _refuse_unguided_transformers(pipe: Any) -> None:
    # Wan 2.2 A14B denoises the low-noise steps with `transformer_2`; wrapping only `transformer`
    # would leave those steps unguided while the spec and the cost report claim otherwise.
    if getattr(pipe, "transformer_2", None) is not None or getattr(pipe.config, "boundary_ratio", None) is not None:
        raise GuidanceError(
            f"{type(pipe).__name__} has a second transformer (transformer_2, boundary_ratio "
            f"{getattr(pipe.config, 'boundary_ratio', None)}): a Wan 2.2 two-stage pipeline, whose low-noise steps "
            "would run unguided; guidance supports one-transformer pipelines (e.g. Wan 2.1)"
        )


@contextlib.contextmanager
def guided(
    pipe: Any,
    spec: GuidanceSpec | dict | None,
    *,
    negative: dict[str, torch.Tensor] | None = None,
    mode: str | Sequence[Sequence[str]] = "sequential",
    share_prefix: bool = True,
) -> Iterator[GuidedDenoiser]:
    """Install a GuidedDenoiser as `pipe.transformer` (restored on exit). `negative`: pipeline-argument
    names (negative_prompt_embeds, negative_pooled_prompt_embeds) -> tensors."""
    driver = driver_for(pipe)
    _refuse_unguided_transformers(pipe)
    original = pipe.transformer
    own_cfg = None if driver.cfg_flag is None else (lambda: bool(getattr(pipe, driver.cfg_flag, False)))
    den = GuidedDenoiser(
        original, spec, scheduler=pipe.scheduler, mode=mode, share_prefix=share_prefix, own_cfg=own_cfg
    )
    if negative:
        unknown = set(negative) - set(driver.negative_names())
        if unknown:
            raise GuidanceError(
                f"negative: unknown inputs {sorted(unknown)}; {type(pipe).__name__} takes {driver.negative_names()}"
            )
        missing = [a for a in driver.negative_names() if negative.get(a) is None]
        if missing and den.spec.uses_negative:
            raise GuidanceError(
                f"negative conditioning incomplete: {type(pipe).__name__} needs {driver.negative_names()}, "
                f"missing {missing}"
            )
        inputs = {kw: negative[arg] for arg, kw in driver.negative if negative.get(arg) is not None}
        if driver.text_ids and "encoder_hidden_states" in inputs:
            inputs["txt_ids"] = torch.zeros(inputs["encoder_hidden_states"].shape[1], 3)
        den.set_negative(**inputs)
    den.check_ready()
    pipe.transformer = den
    try:
        yield den
    finally:
        pipe.transformer = original


def run_guided(
    pipe: Any,
    spec: GuidanceSpec | dict | None,
    *,
    mode: str | Sequence[Sequence[str]] = "sequential",
    share_prefix: bool = True,
    **call: Any,
):
    """Run `pipe(**call)` under guidance `spec`; returns (pipeline output, CostReport).

    `call` holds the pipeline's usual arguments. The pipeline's own CFG is switched off (passing its
    CFG scale > 1 is an error: the spec holds the guidance), so an empty spec is the plain
    pipeline. The negative conditioning comes from its negative embedding arguments, else from
    `negative_prompt` (default "") encoded by the pipeline's own text encoder; it is ignored when
    the spec uses no negative branch.
    """
    driver = driver_for(pipe)
    spec = GuidanceSpec.from_dict(spec)
    own = call.get(driver.cfg_arg)
    if own is not None and own > 1:
        raise GuidanceError(
            f"{driver.cfg_arg} = {own}: the pipeline's own CFG must be off under run_guided; the spec holds the "
            f"guidance (e.g. preset('cfg', scale={own}); an empty spec is no guidance)"
        )
    call[driver.cfg_arg] = 1.0
    negative = {name: call.pop(name) for name in driver.negative_names() if call.get(name) is not None}
    for name in driver.negative_names():
        call.pop(name, None)
    negative_prompt = call.pop("negative_prompt", None)
    if not spec.uses_negative:
        negative = {}
    elif "negative_prompt_embeds" not in negative:
        negative = _encode_negative(pipe, driver, negative_prompt or "", _batch_of(call), call)
    with guided(pipe, spec, negative=negative or None, mode=mode, share_prefix=share_prefix) as den:
        out = pipe(**call)
    return out, den.cost


def native_cfg_call(family: str, scale: float) -> dict[str, float]:
    """The pipeline arguments that switch on its own CFG at `scale` (for comparisons)."""
    return {
        DRIVERS[
            {
                "flux": "FluxPipeline",
                "cogview4": "CogView4Pipeline",
                "wan": "WanPipeline",
                "sd3": "StableDiffusion3Pipeline",
                "toy": "ToyPipeline",
            }[family]
        ].cfg_arg: scale
    }
