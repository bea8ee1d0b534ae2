"""Train the toy DiT: rectified flow on digits, prompt dropout so CFG has an unconditional model.

The result is a `ToyPipeline` folder (safetensors) that `ToyPipeline.from_pretrained` loads.
Written to a temporary folder first and moved into place at the end, so an interrupted run never
leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from tqdm.auto import tqdm

from ..io import atomic_dir
from .data import DIGIT_WORDS, IMAGE_SIZE, TEMPLATES, load_split
from .pipeline import ToyPipeline, image_ids, pack
from .prompt_encoder import ToyPromptEncoder


@dataclass(frozen=True)
class ToyTrainConfig:
    steps: int = 2500
    batch_size: int = 128
    lr: float = 1e-3
    prompt_dropout: float = 0.1
    seed: int = 0
    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    text_dim: int = 32

    def __post_init__(self):
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": 0 < self.lr < 1,
            "prompt_dropout": 0 < self.prompt_dropout < 1,
            "num_layers": self.num_layers >= 1,
            "num_single_layers": self.num_single_layers >= 1,
            "num_attention_heads": self.num_attention_heads >= 1,
            "attention_head_dim": self.attention_head_dim >= 8 and self.attention_head_dim % 4 == 0,
        }
        allowed = {
            "steps": ">= 1",
            "batch_size": ">= 1",
            "lr": "in (0, 1)",
            "prompt_dropout": "in (0, 1) (CFG needs an unconditional model)",
            "num_layers": ">= 1",
            "num_single_layers": ">= 1",
            "num_attention_heads": ">= 1",
            "attention_head_dim": "a multiple of 4, >= 8 (it is split over 3 rope axes)",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"toy training parameter {name}={getattr(self, name)!r} is out of range; allowed: {allowed[name]}"
                )
        if self.num_layers + self.num_single_layers < 6:
            raise ValueError("the toy model needs at least 6 blocks in total (num_layers + num_single_layers >= 6)")


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's dims over Flux's (text index, row, col) rope axes; each part even."""
    spatial = max(4, (head_dim * 3 // 8) // 2 * 2)
    return (head_dim - 2 * spatial, spatial, spatial)


def build_toy_transformer(cfg: ToyTrainConfig) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim,
        guidance_embeds=False,
        axes_dims_rope=rope_axes(cfg.attention_head_dim),
    )


def _training_prompts(labels: torch.Tensor, templates: torch.Tensor, dropped: torch.Tensor) -> list[str]:
    return [
        "" if d else TEMPLATES[int(t)].format(word=DIGIT_WORDS[int(y)])
        for y, t, d in zip(labels.tolist(), templates.tolist(), dropped.tolist())
    ]


def _flow_loss(transformer, encoder, images, labels, cfg: ToyTrainConfig, gen, ids, txt_ids) -> torch.Tensor:
    """One batch's rectified-flow loss: training images with their prompts (dropped at cfg.prompt_dropout),
    noise and times, all drawn from `gen` in a fixed order."""
    pick = torch.randint(len(labels), (cfg.batch_size,), generator=gen)
    templates = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=gen)
    dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.prompt_dropout
    x0 = pack(images[pick])
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.rand(cfg.batch_size, generator=gen)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    embeds, pooled = encoder(_training_prompts(labels[pick], templates, dropped))
    pred = transformer(
        hidden_states=xt,
        timestep=t,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=txt_ids,
        img_ids=ids,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred, noise - x0)  # rectified-flow velocity target


def train_toy(out_dir: str | os.PathLike, cfg: ToyTrainConfig = ToyTrainConfig(), progress: bool = True) -> dict:
    """Train and save a ToyPipeline to `out_dir`; returns the training log (also saved as JSON)."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    split = load_split("train")
    images = torch.from_numpy(split.images)
    labels = torch.from_numpy(split.labels)

    transformer = build_toy_transformer(cfg)
    encoder = ToyPromptEncoder(embed_dim=cfg.text_dim)
    params = [*transformer.parameters(), *encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    ids = image_ids()
    txt_ids = torch.zeros(encoder.config.max_length, 3)

    losses = []
    bar = tqdm(range(cfg.steps), desc="train toy", disable=not progress)
    for step in bar:
        loss = _flow_loss(transformer, encoder, images, labels, cfg, gen, ids, txt_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

    pipe = ToyPipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        prompt_encoder=encoder.eval(),
    )
    log = {
        "config": asdict(cfg),
        "loss": losses,
        "final_loss_mean_last_100": sum(losses[-100:]) / min(100, len(losses)),
        "image_size": IMAGE_SIZE,
        "parameters": sum(p.numel() for p in params),
    }
    # The old model stays in place until the new one is complete (renamed aside, then deleted).
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "train_log.json").write_text(json.dumps(log))
    return log
