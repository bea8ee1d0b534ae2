"""Overhead of the edit hooks when they change nothing, on a moderately sized Flux on CPU.

    python benchmarks/bench_edit_overhead.py [--repeats 40] [--json out.json]

Variants, timed interleaved (each repeat runs every variant once, in a shuffled order) so that
load from other processes hits all of them alike; the medians are compared:
- plain:           the model with no hooks;
- hooked_idle:     an edit layer attached to EVERY block but active on no row of the batch
                   (rows=[]), i.e. the cost of the hook chain itself - the headline ratio;
- hooked_identity: scale alpha=1 on every block for all rows: the hooks bind the block
                   arguments and call the block by keyword, the full path of an active edit
                   that happens to be exact identity.
Outputs of all variants are checked to be bit-identical to plain.

On a shared machine the forward-time ratio is noisy at the 1-5% level, so the benchmark also
measures the hook's fixed cost per block call directly (a block called on 1+1 tokens, with and
without an idle hook, many thousands of times interleaved) and reports the bound
`blocks x per-call cost / plain forward`, which does not depend on other processes' load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ditguide.edits import BlockEdit, EditSpec, apply_edits
from ditguide.families import get_family
from ditguide.families.tiny import tiny_transformer


def flux_model_and_inputs(args):
    head_dim = args.head_dim
    rope = (head_dim // 4, 3 * head_dim // 8, head_dim - head_dim // 4 - 3 * head_dim // 8)
    model = tiny_transformer(
        "flux",
        num_layers=args.double,
        num_single_layers=args.single,
        num_attention_heads=args.heads,
        attention_head_dim=head_dim,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        axes_dims_rope=rope,
    )
    side = int(args.image_tokens**0.5)
    g = torch.Generator().manual_seed(0)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    inputs = dict(
        hidden_states=torch.randn(args.batch, side * side, 4, generator=g),
        encoder_hidden_states=torch.randn(args.batch, args.text_tokens, 64, generator=g),
        pooled_projections=torch.randn(args.batch, 64, generator=g),
        timestep=torch.rand(args.batch, generator=g),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(args.text_tokens, 3),
    )
    return model, inputs


def hook_cost_per_block_call(model, calls: int) -> float:
    """Median extra seconds an idle edit hook adds to one block call (block on 1+1 tokens)."""
    block = model.single_transformer_blocks[0]
    dim = model.inner_dim
    g = torch.Generator().manual_seed(1)
    kwargs = dict(
        hidden_states=torch.randn(1, 1, dim, generator=g),
        encoder_hidden_states=torch.randn(1, 1, dim, generator=g),
        temb=torch.randn(1, dim, generator=g),
        image_rotary_emb=None,
    )
    chunk = 200

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(chunk):
            block(**kwargs)
        return (time.perf_counter() - start) / chunk

    plain, hooked = [], []
    idle = EditSpec([BlockEdit("skip", ["single:0"])])
    for _ in range(max(1, calls // chunk)):
        plain.append(timed())
        with apply_edits(model, idle, rows=[]):
            hooked.append(timed())
    return max(0.0, statistics.median(hooked) - statistics.median(plain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=4)
    parser.add_argument("--single", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--image-tokens", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20000, help="block calls for the per-call hook cost")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    model, inputs = flux_model_and_inputs(args)
    n_blocks = len(get_family(model).blocks(model))
    every_block = list(range(n_blocks))
    variants = {
        "plain": (None, None),
        "hooked_idle": (EditSpec([BlockEdit("skip", every_block)]), []),
        "hooked_identity": (EditSpec([BlockEdit("scale", every_block, alpha=1.0)]), None),
    }

    reference = model(**inputs).sample

    def forward(name):
        spec, rows = variants[name]
        if spec is None:
            start = time.perf_counter()
            out = model(**inputs).sample
            return time.perf_counter() - start, out
        with apply_edits(model, spec, rows=rows):
            start = time.perf_counter()
            out = model(**inputs).sample
            return time.perf_counter() - start, out

    for _ in range(args.warmup):
        for name in variants:
            forward(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(0)
    for _ in range(args.repeats):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            seconds, out = forward(name)
            if not torch.equal(out, reference):
                raise SystemExit(f"variant {name} changed the output")
            times[name].append(seconds)

    medians = {name: statistics.median(t) for name, t in times.items()}
    per_call = hook_cost_per_block_call(model, args.calls)
    bound = 1.0 + n_blocks * per_call / medians["plain"]
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "blocks": n_blocks,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "median_ms": {name: 1e3 * m for name, m in medians.items()},
        "ratio_hooked_idle": medians["hooked_idle"] / medians["plain"],
        "ratio_hooked_identity": medians["hooked_identity"] / medians["plain"],
        "hook_cost_per_block_call_us": 1e6 * per_call,
        "ratio_bound_from_per_call_cost": bound,
        "target_ratio": 1.02,
    }
    print(
        f"Flux {args.double}+{args.single} blocks, {args.heads}x{args.head_dim} heads, batch {args.batch}, "
        f"{args.image_tokens}+{args.text_tokens} tokens, {result['threads']} threads, {args.repeats} interleaved repeats"
    )
    for name, m in medians.items():
        print(f"  {name:16s} median {1e3 * m:8.2f} ms")
    print(f"  ratio hooked_idle / plain     = {result['ratio_hooked_idle']:.4f} (target <= 1.02)")
    print(f"  ratio hooked_identity / plain = {result['ratio_hooked_identity']:.4f}")
    print(
        f"  idle hook cost per block call = {1e6 * per_call:.1f} us -> bound {bound:.4f} "
        f"({n_blocks} blocks per forward)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
