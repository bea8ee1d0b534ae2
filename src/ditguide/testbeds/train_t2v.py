"""Train the T2V testbed and its weak twin (DVC stage train_toy_t2v).

- `model/`: diffusers' WanTransformer3DModel (params.yaml `train_toy_t2v`: 8 blocks of width 96, 3 heads x 32,
  FFN 192, 2x2x2 patches) on the
  moving-shapes clips (`ditguide.testbeds.clips`), as a `ToyVideoPipeline` (a WanPipeline);
- `twin_early/`: the same run's checkpoint at `early_fraction` of the steps (Karras et al.'s "less
  trained" weak model, the autoguidance reference).

Both share one frozen, seeded prompt encoder built like the T2I testbed's (`ToyPromptEncoder`, random
word and position embeddings, nothing trained), over the clips' vocabulary. Rectified flow (velocity
target noise - x0, x_t = (1 - t) x0 + t noise), logit-normal t, the timestep passed as Wan takes it
(t * 1000), caption dropout for CFG, AdamW with a one-cycle schedule, gradient clipping; the recipe
of `ditguide.testbeds.train`. Folders are written to a temporary name and moved into place at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from tqdm.auto import tqdm

from ..toy.prompt_encoder import ToyPromptEncoder
from ..toy.video_pipeline import ToyVideoPipeline, encode_text
from . import clips
from .train import save_pipeline


@dataclass(frozen=True)
class ClipsTrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    prompt_dropout: float = 0.1
    seed: int = 0
    frames: int = clips.FRAMES
    num_layers: int = 8
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 128
    text_dim: int = 64
    patch_t: int = 1
    patch_hw: int = 4
    early_fraction: float = 0.125  # the weak twin: checkpoint at this fraction of the steps

    def __post_init__(self):
        for name in self.__dataclass_fields__:  # types first: YAML reads 1e-4 as a string
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"train_toy_t2v.{name}={value!r} is out of range; allowed: a number")
        rules = {
            "steps": (isinstance(self.steps, int) and self.steps >= 8, "an integer >= 8"),
            "batch_size": (isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1"),
            "lr": (0 < self.lr < 1, "in (0, 1)"),
            "prompt_dropout": (0 < self.prompt_dropout < 1, "in (0, 1) (CFG needs an unconditional model)"),
            "frames": (
                isinstance(self.frames, int) and self.frames >= 2 and self.frames % self.patch_t == 0,
                "an integer >= 2, a multiple of patch_t",
            ),
            "num_layers": (
                isinstance(self.num_layers, int) and self.num_layers >= 8,
                "an integer >= 8 (the issue's minimum)",
            ),
            "num_attention_heads": (
                isinstance(self.num_attention_heads, int) and self.num_attention_heads >= 1,
                "an integer >= 1",
            ),
            "attention_head_dim": (
                isinstance(self.attention_head_dim, int)
                and self.attention_head_dim >= 12
                and self.attention_head_dim % 2 == 0,
                "an even integer >= 12 (Wan's 3-axis RoPE)",
            ),
            "ffn_dim": (isinstance(self.ffn_dim, int) and self.ffn_dim >= 1, "an integer >= 1"),
            "text_dim": (isinstance(self.text_dim, int) and self.text_dim >= 4, "an integer >= 4"),
            "patch_t": (self.patch_t in (1, 2), "1 or 2"),
            "patch_hw": (self.patch_hw in (1, 2, 4) and clips.SIZE % self.patch_hw == 0, "1, 2 or 4"),
            "early_fraction": (0 < self.early_fraction < 1, "in (0, 1)"),
        }
        for name, (ok, allowed) in rules.items():
            if not ok:
                raise ValueError(f"train_toy_t2v.{name}={getattr(self, name)!r} is out of range; allowed: {allowed}")


def build_transformer(cfg: ClipsTrainConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(cfg.patch_t, cfg.patch_hw, cfg.patch_hw),
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=3,
        out_channels=3,
        text_dim=cfg.text_dim,
        freq_dim=256,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def build_prompt_encoder(cfg: ClipsTrainConfig) -> ToyPromptEncoder:
    """The frozen encoder, built as the T2I testbed's (`testbeds.train.build_prompt_encoder`):
    seeded random word and position embeddings, a fixed random token mix; nothing is trained."""
    torch.manual_seed(cfg.seed + 1)
    encoder = ToyPromptEncoder(
        vocabulary=["<pad>", "<unk>", *clips.vocabulary()], max_length=clips.MAX_WORDS, embed_dim=cfg.text_dim
    )
    with torch.no_grad():
        encoder.position_embedding.normal_()
    return encoder.requires_grad_(False).eval()


def pipeline(transformer: WanTransformer3DModel, encoder: ToyPromptEncoder, frames: int) -> ToyVideoPipeline:
    pipe = ToyVideoPipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        text_encoder=encoder,
        num_frames=frames,
        height=clips.SIZE,
        width=clips.SIZE,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_model(videos01: np.ndarray) -> torch.Tensor:
    """(N, F, H, W, 3) in [0, 1] -> (N, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(videos01 * 2.0 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def draw_batch(cfg: ClipsTrainConfig, encoder, rng: np.random.Generator, gen: torch.Generator, device, train_encoder):
    """One training batch: clean clips x0, caption embeddings (with caption dropout), noise and t.
    Every draw is on the CPU, in a fixed order (clips, renders, dropout from rng; noise, t from gen)."""
    batch = clips.sample_clips(cfg.batch_size, rng)
    videos, _ = clips.render(batch, rng, frames=cfg.frames)
    x0 = to_model(videos).to(device)
    dropped = rng.random(cfg.batch_size) < cfg.prompt_dropout
    with torch.set_grad_enabled(train_encoder):
        embeds = encode_text(encoder, ["" if d else c.caption() for c, d in zip(batch, dropped)])
    noise = torch.randn(x0.shape, generator=gen).to(device)
    t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen)).to(device)  # logit-normal(0, 1)
    return x0, embeds, noise, t


def train_clips_model(
    cfg: ClipsTrainConfig,
    encoder: ToyPromptEncoder,
    *,
    snapshot_at: int | None = None,
    progress: bool = True,
    log_every: int = 100,
    on_step=None,
    device: str | torch.device = "cpu",
    train_encoder: bool = False,
):
    """One training run; returns (model, losses, copy of the model after `snapshot_at` steps).
    on_step(step, transformer), if given, is called after every optimiser step (e.g. to look at the
    model during a long run); it must not change the model. device: where the model trains (the
    data, noise and t are drawn on the CPU as always, so a run's draws do not depend on it).
    train_encoder: also train the prompt encoder (in place), making it a learned one; the
    stage's frozen encoder is the default."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    transformer = build_transformer(cfg).to(device).train()
    params = list(transformer.parameters())
    if train_encoder:
        encoder.requires_grad_(True).train()
        params += list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    losses, snapshot = [], None
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="train clips", disable=not progress, mininterval=10)
    for step in bar:
        x0, embeds, noise, t = draw_batch(cfg, encoder, rng, gen, device, train_encoder)
        tb = t[:, None, None, None, None]
        xt = (1 - tb) * x0 + tb * noise
        pred = transformer(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=embeds, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{cfg.steps}: loss {np.mean(losses[-log_every:]):.4f} ({time.time() - start:.0f} s)",
                flush=True,
            )
        if on_step is not None:
            on_step(step + 1, transformer)
        if snapshot_at is not None and step + 1 == snapshot_at:
            snapshot = build_transformer(cfg)
            snapshot.load_state_dict(transformer.state_dict())
    return transformer.eval(), losses, snapshot


def train_clips(
    out_dir: str | os.PathLike, cfg: ClipsTrainConfig = ClipsTrainConfig(), progress: bool = True, on_step=None
) -> dict:
    """Train the T2V testbed and its early twin into out_dir/{model,twin_early}; returns a summary."""
    out_dir = Path(out_dir)
    encoder = build_prompt_encoder(cfg)
    early_step = max(1, round(cfg.steps * cfg.early_fraction))
    start = time.time()
    model, losses, early = train_clips_model(cfg, encoder, snapshot_at=early_step, progress=progress, on_step=on_step)
    seconds = time.time() - start
    summary = {"config": asdict(cfg)}
    logs = {}
    for name, transformer, steps in (("model", model, cfg.steps), ("twin_early", early, early_step)):
        entry = {
            "config": asdict(cfg),
            "variant": name,
            "steps_trained": steps,
            "parameters": sum(p.numel() for p in transformer.parameters()),
            "seconds": round(seconds * steps / cfg.steps),
            "image_size": clips.SIZE,
            "num_frames": cfg.frames,
            "final_loss_mean_last_100": float(np.mean(losses[max(0, steps - 100) : steps])),
            "loss": losses[:steps],
        }
        summary[name] = {k: v for k, v in entry.items() if k not in ("loss", "config")}
        logs[name] = entry
    # Both folders are written last, each atomically: an interrupted run leaves the old ones.
    for name, transformer in (("model", model), ("twin_early", early)):
        save_pipeline(pipeline(transformer, encoder, cfg.frames), out_dir / name, logs[name])
    return summary
