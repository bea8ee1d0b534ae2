"""Train the glyph-scene testbed and its two trained weak twins (DVC stage train_scenes).

- `model/`: the testbed, diffusers' FluxTransformer2DModel with 2 double + 10 single blocks of width
  64 (4 heads x 16): deep and narrow, so a layer map has depth to map and the model stays
  capacity-limited (good, clearly not at the data);
- `twin_early/`: the same run's checkpoint at `early_fraction` of the steps (Karras et al.'s
  "less trained" weak model);
- `twin_shallow/`: a shallower model (`shallow_layers` blocks) trained by the same recipe, same
  seed (Karras et al.'s "smaller" weak model).

All three share one *frozen* prompt encoder (random, seeded), so a twin takes exactly the
conditioning the main model takes: autoguidance with a twin needs no second text encoder, and the
twins differ from the main model only in the transformer. Each folder is a `ToyPipeline`.
Rectified flow (velocity target noise - x0), logit-normal t, caption dropout for CFG, AdamW with a
one-cycle schedule. Folders are written to a temporary name and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from tqdm.auto import tqdm

from ..toy.pipeline import ToyPipeline, image_ids, pack
from ..toy.prompt_encoder import ToyPromptEncoder
from ..toy.train import rope_axes
from . import scenes

TEXT_TOKENS = 6  # the longest caption: "<colour> <digit> left of <colour> <digit>"


@dataclass(frozen=True)
class ScenesTrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    prompt_dropout: float = 0.1
    seed: int = 0
    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 10
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    text_dim: int = 64
    early_fraction: float = 0.125  # the early twin: checkpoint at this fraction of the steps
    shallow_layers: int = 1  # the shallow twin: double blocks ...
    shallow_single_layers: int = 3  # ... and single blocks

    def __post_init__(self):
        for name in self.__dataclass_fields__:  # types first: YAML reads 1e-4 as a string
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"train_scenes.{name}={value!r} is out of range; allowed: a number")
        rules = {
            "steps": (self.steps >= 8, ">= 8"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (0 < self.lr < 1, "in (0, 1)"),
            "prompt_dropout": (0 < self.prompt_dropout < 1, "in (0, 1) (CFG needs an unconditional model)"),
            "num_layers": (self.num_layers >= 1, ">= 1"),
            "num_single_layers": (self.num_single_layers >= 1, ">= 1"),
            "num_attention_heads": (self.num_attention_heads >= 1, ">= 1"),
            "attention_head_dim": (
                self.attention_head_dim >= 8 and self.attention_head_dim % 4 == 0,
                "a multiple of 4, >= 8",
            ),
            "text_dim": (self.text_dim >= 4, ">= 4"),
            "early_fraction": (0 < self.early_fraction < 1, "in (0, 1)"),
            "shallow_layers": (1 <= self.shallow_layers <= self.num_layers, "in 1..num_layers"),
            "shallow_single_layers": (
                1 <= self.shallow_single_layers <= self.num_single_layers,
                "in 1..num_single_layers",
            ),
        }
        for name, (ok, allowed) in rules.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
                raise ValueError(f"train_scenes.{name}={value!r} is out of range; allowed: {allowed}")


def build_transformer(cfg: ScenesTrainConfig, shallow: bool = False) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=3 * 4,  # 2x2 RGB patches
        num_layers=cfg.shallow_layers if shallow else cfg.num_layers,
        num_single_layers=cfg.shallow_single_layers if shallow else cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim,
        guidance_embeds=False,
        axes_dims_rope=rope_axes(cfg.attention_head_dim),
    )


def build_prompt_encoder(cfg: ScenesTrainConfig) -> ToyPromptEncoder:
    """The frozen encoder: seeded random word and position embeddings (word order matters: which
    object is left), a fixed random token mix. Nothing in it is trained."""
    torch.manual_seed(cfg.seed + 1)
    encoder = ToyPromptEncoder(
        vocabulary=["<pad>", "<unk>", *scenes.vocabulary()], max_length=TEXT_TOKENS, embed_dim=cfg.text_dim
    )
    with torch.no_grad():
        encoder.position_embedding.normal_()
    return encoder.requires_grad_(False).eval()


def _pipeline(transformer, encoder) -> ToyPipeline:
    return ToyPipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        prompt_encoder=encoder,
    )


def save_pipeline(pipe, out_dir: Path, log: dict) -> None:
    """The pipeline folder and its training log, replacing `out_dir` only once complete (the old
    folder is renamed aside first, never deleted before the new one is in place: ditguide.io)."""
    from ..io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "train_log.json").write_text(json.dumps(log))


def train_one(
    cfg: ScenesTrainConfig,
    encoder: ToyPromptEncoder,
    *,
    shallow: bool = False,
    snapshot_at: int | None = None,
    progress: bool = True,
) -> tuple[FluxTransformer2DModel, list[float], FluxTransformer2DModel | None]:
    """One training run; returns (model, losses, copy of the model after `snapshot_at` steps)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    glyphs, labels = scenes.glyph_pool("train")
    transformer = build_transformer(cfg, shallow).train()
    params = list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    ids = image_ids(height=scenes.SIZE, width=scenes.SIZE)
    txt_ids = torch.zeros(TEXT_TOKENS, 3)
    losses, snapshot = [], None
    bar = tqdm(
        range(cfg.steps), desc="train shallow twin" if shallow else "train scenes", disable=not progress, mininterval=5
    )
    for step in bar:
        batch = scenes.sample_scenes(cfg.batch_size, rng)
        x0 = pack(torch.from_numpy(scenes.render(batch, glyphs, labels, rng) * 2.0 - 1.0))
        dropped = rng.random(cfg.batch_size) < cfg.prompt_dropout
        embeds, pooled = encoder(["" if d else s.caption() for s, d in zip(batch, dropped)])
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen))  # logit-normal(0, 1)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        pred = transformer(
            hidden_states=xt,
            timestep=t,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=ids,
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if snapshot_at is not None and step + 1 == snapshot_at:
            snapshot = build_transformer(cfg, shallow)
            snapshot.load_state_dict(transformer.state_dict())
    return transformer.eval(), losses, snapshot


def train_scenes(
    out_dir: str | os.PathLike, cfg: ScenesTrainConfig = ScenesTrainConfig(), progress: bool = True
) -> dict:
    """Train the testbed and its twins into out_dir/{model,twin_early,twin_shallow}; returns a summary."""
    out_dir = Path(out_dir)
    encoder = build_prompt_encoder(cfg)
    early_step = max(1, round(cfg.steps * cfg.early_fraction))
    summary = {"config": asdict(cfg)}
    start = time.time()
    model, losses, early = train_one(cfg, encoder, snapshot_at=early_step, progress=progress)
    main_s = time.time() - start
    start = time.time()
    shallow, shallow_losses, _ = train_one(cfg, encoder, shallow=True, progress=progress)
    shallow_s = time.time() - start

    def log(name, transformer, losses, seconds, steps):
        n = sum(p.numel() for p in transformer.parameters())
        entry = {
            "config": asdict(cfg),
            "variant": name,
            "steps_trained": steps,
            "parameters": n,
            "seconds": round(seconds),
            "final_loss_mean_last_100": float(np.mean(losses[max(0, steps - 100) : steps])),
            "loss": losses[:steps],
        }
        summary[name] = {k: v for k, v in entry.items() if k not in ("loss", "config")}
        return entry

    # The three folders are written last, each atomically: an interrupted run leaves the old ones.
    logs = {
        "model": log("model", model, losses, main_s, cfg.steps),
        "twin_early": log("twin_early", early, losses, main_s * early_step / cfg.steps, early_step),
        "twin_shallow": log("twin_shallow", shallow, shallow_losses, shallow_s, cfg.steps),
    }
    for name, transformer in (("model", model), ("twin_early", early), ("twin_shallow", shallow)):
        save_pipeline(_pipeline(transformer, encoder), out_dir / name, logs[name])
    return summary
