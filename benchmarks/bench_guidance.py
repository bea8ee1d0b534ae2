"""Cost of every guidance method: time per step and peak memory relative to CFG, block evaluations per step.

    python benchmarks/bench_guidance.py                    # tiny pipelines of every family, CPU
    python benchmarks/bench_guidance.py --full-size        # FLUX.1-dev, CogView4-6B, Wan2.1-1.3B; CUDA, bf16
    python benchmarks/bench_guidance.py --full-size --families wan   # one model per call (H100: ~5 min for Wan)
    python benchmarks/bench_guidance.py --full-size --dry-run   # build the full-size models on 'meta', count params

CPU: each family's tiny pipeline (the tests' random-weight pipelines, tests/tiny_pipelines.py) runs
the same prompts through `run_guided`; time per step is the process CPU time (one thread), best of
`--repeats` interleaved runs, so that other processes on a shared machine disturb it little. Tiny
models are dominated by Python overhead, so their time ratios show the wrapper's bookkeeping, not
the compute saved; the "medium" Flux (width 256, 12 blocks, 64 image tokens) is where compute dominates. Block evaluations are exact everywhere.
Peak memory (CPU): the most bytes of tensor storages allocated during one run and alive at the same
time (`PeakTensorMemory`: every aten op's fresh outputs, weakly referenced, so a freed one stops
counting; kernel-internal scratch is not seen), in a run of its own after the timed ones. Weights
exist before the run and are not counted: this is the activation memory that batched branches
multiply, and `mem_vs_cfg` is its ratio to plain CFG's.

Full size: random-weight transformers built from the published configs (hard-coded below; nothing
is downloaded), called through GuidedDenoiser with a fixed clock at realistic token counts;
CUDA-event timing; peak memory from the CUDA allocator (`peak_mem_gb` with the weights, `act_peak_gb`
above what was allocated before the method ran, `mem_vs_cfg` the latter's ratio to CFG's).
Results: benchmarks/results/guidance_cpu.json / guidance_<gpu>.json.

Targets: the wrapper with guidance off costs <= 2% over the plain pipeline; CFG + autoguidance with
prefix sharing costs fewer block evaluations (and less time at full size) than the naive 3 passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from ditguide.denoiser import GuidedDenoiser  # noqa: E402
from ditguide.families import get_family  # noqa: E402
from ditguide.guidance import StepInfo, preset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Published transformer configs (diffusers format) of the full-size models.
FULL_CONFIGS = {
    "flux": (  # black-forest-labs/FLUX.1-dev, transformer/config.json: 19 double + 38 single blocks, 11.9B
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
    ),
    "cogview4": (  # THUDM/CogView4-6B, transformer/config.json: 28 blocks
        "CogView4Transformer2DModel",
        dict(
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=28,
            attention_head_dim=128,
            num_attention_heads=32,
            text_embed_dim=4096,
            time_embed_dim=512,
            condition_dim=256,
            pos_embed_max_size=128,
            sample_size=128,
            rope_axes_dim=(256, 256),
        ),
    ),
    "wan": (  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json: 30 blocks
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=1024,
        ),
    ),
}


def skip(*blocks):
    return {"edits": [{"op": "skip", "blocks": list(blocks)}]}


def scale(alpha, *blocks):
    return {"edits": [{"op": "scale", "blocks": list(blocks), "alpha": alpha}]}


def methods(num_blocks: int) -> dict[str, tuple[dict, dict]]:
    """Every method, with the edited block in the middle of the model (global index) and the strong
    edit on the last block; (spec, wrapper options)."""
    mid, late = num_blocks // 2, num_blocks - 1
    ag = preset("autoguidance", cfg_scale=5.0, weak=skip(mid))
    return {
        "off": (preset("off"), {}),
        "cfg": (preset("cfg"), {}),
        "cfg_batched": (preset("cfg"), {"mode": "batched"}),
        "cfg_zero_star": (preset("cfg_zero_star"), {}),
        "apg": (preset("apg"), {}),
        "guidance_interval": (preset("guidance_interval"), {}),
        "autoguidance": (preset("autoguidance", weak=skip(mid)), {}),
        "slg": (preset("slg", blocks=[mid]), {}),
        "slg_weak_negative": (preset("slg_weak_negative", blocks=[mid]), {}),
        "stg": (preset("stg", blocks=[mid]), {}),
        "pag": (preset("pag", blocks=[mid]), {}),
        "strong_weak": (preset("strong_weak", strong=scale(1.25, late), weak=skip(mid)), {}),
        "cfg+ag naive": (ag, {"share_prefix": False}),
        "cfg+ag shared": (ag, {}),
        "cfg+ag batched naive": (ag, {"mode": "batched", "share_prefix": False}),
        "cfg+ag batched shared": (ag, {"mode": "batched"}),
        # The memory budget of generation (--max-batch-branches): at most 2 of the 3 branches per call.
        "cfg+ag batched max 2": (ag, {"mode": "batched", "max_batch_branches": 2}),
    }


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages allocated inside the context and alive at the same time.

    The CPU allocator keeps no statistics (torch.cuda.max_memory_allocated has no CPU twin), and
    tracemalloc sees Python objects, not tensor data. This mode sees every aten op: each output whose
    storage is new (not a view or an in-place result of an input) is counted until it is freed,
    which a weak reference to its storage tells. Sweeping the live set on every op is slow: use it
    for a run of its own, not a timed one.
    """

    def __enter__(self):
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        inputs = {
            StorageWeakRef(t.untyped_storage()).cdata
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref.cdata not in inputs and ref.cdata not in self.live:
                self.live[ref.cdata] = (ref, storage.nbytes())
                self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        return out


def peak_bytes(fn) -> int:
    """Peak activation bytes of `fn()` (see PeakTensorMemory)."""
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak


# --------------------------------------------------------------------------------------------------
# CPU: tiny pipelines


def tiny_pipelines():
    """The tests' tiny random-weight pipelines (tests/tiny_pipelines.py), the models the exactness tests
    run: one definition, outside the package (test plumbing, not part of ditguide)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import tiny_pipelines

    return tiny_pipelines


def _medium_flux_pipeline():
    """The tiny Flux pipeline with a wider, deeper transformer (12 blocks, width 256), 64 image tokens."""
    from ditguide.families.tiny import tiny_transformer

    pipe = tiny_pipelines().tiny_pipeline("flux")
    pipe.transformer = tiny_transformer(
        "flux",
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        axes_dims_rope=(16, 24, 24),
    )
    return pipe


def bookkeeping_us(pipe, family: str, repeats: int = 2000) -> float:
    """The wrapper's own time per call with guidance off, in microseconds: the model's forward is
    replaced by a no-op for the measurement, so only the wrapper's bookkeeping is timed."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ditguide.families.tiny import tiny_inputs

    model = pipe.transformer
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    den = GuidedDenoiser(model, None, scheduler=scheduler)
    inputs = tiny_inputs(family, 1)
    model.forward = lambda *a, **kw: (kw["hidden_states"],)
    try:
        best = []
        for fn in (lambda: model(**inputs, return_dict=False), lambda: den(**inputs, return_dict=False)):
            t0 = time.process_time()
            for _ in range(repeats):
                fn()
            best.append((time.process_time() - t0) / repeats)
    finally:
        del model.forward
    return 1e6 * (best[1] - best[0])


def bench_cpu(args) -> dict:
    from ditguide.pipelines import run_guided

    tiny = tiny_pipelines()
    torch.set_num_threads(args.threads)
    cases = {f: (lambda f=f: tiny.tiny_pipeline(f), f, tiny.TINY_CALL[f]) for f in ("flux", "cogview4", "wan", "sd3")}
    cases["flux-medium"] = (_medium_flux_pipeline, "flux", dict(height=16, width=16))
    report = {}
    for name, (build, family, sizes) in cases.items():
        if args.families and name not in args.families:
            continue
        pipe = build()
        num_blocks = len(get_family(pipe.transformer).blocks(pipe.transformer))

        def call(**extra):
            args_ = dict(
                sizes, num_inference_steps=args.steps, output_type="latent", **tiny.tiny_prompts(family, args.batch)
            )
            return dict(args_, generator=torch.Generator().manual_seed(0), **extra)

        own_cfg = {"flux": "true_cfg_scale"}.get(family, "guidance_scale")

        def plain_run():
            pipe(**{k: v for k, v in call().items() if not k.startswith("negative")}, **{own_cfg: 1.0})

        runs = {"plain": plain_run}
        for method, (spec, options) in methods(num_blocks).items():
            if not args.methods or method in args.methods:
                if "max_batch_branches" in options:
                    # run_guided takes a mode, not the cap: the cap's grouping as explicit groups.
                    den = GuidedDenoiser(pipe.transformer, spec, scheduler=pipe.scheduler, **options)
                    options = {"mode": den.explicit_groups(), "share_prefix": den.share_prefix}
                runs[method] = lambda spec=spec, options=options: run_guided(pipe, spec, **options, **call())[1]
        # CPU time of this process (one thread), not wall time: other processes on a shared machine
        # then disturb the numbers much less. Interleaved repeats, best per method.
        times = {k: [] for k in runs}
        costs = {k: fn() for k, fn in runs.items()}  # warm-up, and the cost of each method
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t0 = time.process_time()
                fn()
                times[k].append(time.process_time() - t0)
        memory = {k: peak_bytes(fn) for k, fn in runs.items()}
        plain = min(times.pop("plain")) / args.steps
        rows = {}
        for method, ts in times.items():
            cost = costs[method]
            rows[method] = {
                "step_ms": 1e3 * min(ts) / args.steps,
                "block_evals_per_step": cost.block_evals / args.steps,
                "nfe_per_step": cost.nfe / args.steps,
                "act_peak_mb": memory[method] / 2**20,
            }
        cfg_ms = rows.get("cfg", {}).get("step_ms")
        cfg_mem = rows.get("cfg", {}).get("act_peak_mb")
        for row in rows.values():
            row["time_vs_cfg"] = row["step_ms"] / cfg_ms if cfg_ms else None
            row["mem_vs_cfg"] = row["act_peak_mb"] / cfg_mem if cfg_mem else None
        off = rows.get("off", {}).get("step_ms")
        report[name] = {
            "blocks_per_forward": num_blocks,
            "plain_step_ms": 1e3 * plain,
            "plain_act_peak_mb": memory["plain"] / 2**20,
            "wrapper_overhead": (off / (1e3 * plain) - 1.0) if off else None,
            "wrapper_bookkeeping_us_per_call": bookkeeping_us(pipe, family),
            "methods": rows,
        }
        print_family(name, report[name])
    return report


# --------------------------------------------------------------------------------------------------
# GPU: full-size transformers


def build_full(family: str, device: str, dtype: torch.dtype):
    import diffusers

    cls_name, config = FULL_CONFIGS[family]
    cls = getattr(diffusers, cls_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if device != "meta" else torch.float32)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def full_inputs(family: str, batch: int, device: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """Realistic inputs: Flux/CogView4 1024x1024, Wan 81 frames 480x832 (RESEARCH.md's cost table)."""
    g = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=g, device=device, dtype=dtype)

    b = batch
    if family == "flux":
        img, txt = 4096, 512
        ids = torch.zeros(64, 64, 3, device=device)
        ids[..., 1] = torch.arange(64, device=device)[:, None]
        ids[..., 2] = torch.arange(64, device=device)[None, :]
        inputs = dict(
            hidden_states=randn(b, img, 64),
            encoder_hidden_states=randn(b, txt, 4096),
            pooled_projections=randn(b, 768),
            timestep=torch.full((b,), 0.5, device=device, dtype=dtype),
            guidance=torch.full((b,), 3.5, device=device),
            img_ids=ids.reshape(img, 3).to(dtype),
            txt_ids=torch.zeros(txt, 3, device=device, dtype=dtype),
        )
        negative = dict(encoder_hidden_states=randn(b, txt, 4096), pooled_projections=randn(b, 768))
    elif family == "cogview4":
        size = torch.tensor([[1024.0, 1024.0]], device=device, dtype=dtype).repeat(b, 1)
        inputs = dict(
            hidden_states=randn(b, 16, 128, 128),
            encoder_hidden_states=randn(b, 128, 4096),
            timestep=torch.full((b,), 500.0, device=device, dtype=dtype),
            original_size=size,
            target_size=size.clone(),
            crop_coords=torch.zeros(b, 2, device=device, dtype=dtype),
        )
        negative = dict(encoder_hidden_states=randn(b, 128, 4096))
    else:
        inputs = dict(
            hidden_states=randn(b, 16, 21, 60, 104),
            encoder_hidden_states=randn(b, 512, 4096),
            timestep=torch.full((b,), 500.0, device=device, dtype=dtype),
        )
        negative = dict(encoder_hidden_states=randn(b, 512, 4096))
    return inputs, negative


def bench_full(args, device: str = "cuda") -> dict:
    device = "meta" if args.dry_run else device
    dtype = torch.bfloat16
    report = {}
    for family in args.families or list(FULL_CONFIGS):
        model = build_full(family, device, dtype)
        num_blocks = len(get_family(model).blocks(model))
        params = sum(p.numel() for p in model.parameters())
        print(f"{family}: {FULL_CONFIGS[family][0]}, {params / 1e9:.2f}B parameters, {num_blocks} blocks")
        if args.dry_run:
            report[family] = {"params": params, "blocks_per_forward": num_blocks}
            continue
        inputs, negative = full_inputs(family, args.batch, device, dtype)
        sigmas = torch.linspace(1.0, 1.0 / args.steps, args.steps).tolist()
        cuda = device.startswith("cuda")

        def timed(fn):
            fn(0)  # warm-up (kernels, allocator)
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            for i in range(args.steps):
                fn(i)
            if not cuda:
                return 1e3 * (time.perf_counter() - t0) / args.steps
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / args.steps

        with torch.no_grad():
            plain_ms = timed(lambda i: model(**inputs, return_dict=False))
            rows = {}
            for method, (spec, options) in methods(num_blocks).items():
                if args.methods and method not in args.methods:
                    continue
                step = {"i": 0}
                if cuda:
                    torch.cuda.reset_peak_memory_stats()  # this method's peak, not an earlier one's
                    before = torch.cuda.memory_allocated()
                den = GuidedDenoiser(
                    model,
                    spec,
                    clock=lambda: StepInfo(step["i"], args.steps, sigmas[step["i"]]),
                    negative=negative,
                    **options,
                )

                def run(i, den=den):
                    if i == 0:
                        den.reset()  # the cost then covers the timed loop only, not the warm-up
                    step["i"] = i
                    den(**inputs, return_dict=False)

                ms = timed(run)
                cost = den.cost
                rows[method] = {
                    "step_ms": ms,
                    "block_evals_per_step": cost.block_evals / len(cost.steps),
                    "nfe_per_step": cost.nfe / len(cost.steps),
                }
                if cuda:
                    rows[method]["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    rows[method]["act_peak_gb"] = (torch.cuda.max_memory_allocated() - before) / 2**30
        cfg_ms = rows.get("cfg", {}).get("step_ms")
        cfg_mem = rows.get("cfg", {}).get("act_peak_gb")
        for row in rows.values():
            row["time_vs_cfg"] = row["step_ms"] / cfg_ms if cfg_ms else None
            if "act_peak_gb" in row:
                row["mem_vs_cfg"] = row["act_peak_gb"] / cfg_mem if cfg_mem else None
        off = rows.get("off", {}).get("step_ms")
        report[family] = {
            "params": params,
            "blocks_per_forward": num_blocks,
            "plain_step_ms": plain_ms,
            "wrapper_overhead": (off / plain_ms - 1.0) if off else None,
            "methods": rows,
        }
        print_family(family, report[family])
        del model
        if cuda:
            torch.cuda.empty_cache()
    return report


# --------------------------------------------------------------------------------------------------


def print_family(name: str, r: dict) -> None:
    overhead = r["wrapper_overhead"]
    print(
        f"\n== {name}: {r['blocks_per_forward']} blocks, plain {r['plain_step_ms']:.2f} ms/step"
        + (f", wrapper overhead (guidance off) {100 * overhead:+.1f}%" if overhead is not None else "")
    )
    if "wrapper_bookkeeping_us_per_call" in r:
        print(f"wrapper bookkeeping (guidance off): {r['wrapper_bookkeeping_us_per_call']:.1f} us per call")
    print(f"{'method':24s} {'ms/step':>9s} {'vs CFG':>7s} {'blocks/step':>12s} {'NFE/step':>9s} {'mem vs CFG':>11s}")
    for method, row in r["methods"].items():
        ratio = f"{row['time_vs_cfg']:.2f}" if row["time_vs_cfg"] is not None else "-"
        mem = f"{row['mem_vs_cfg']:.2f}" if row.get("mem_vs_cfg") is not None else "-"
        print(
            f"{method:24s} {row['step_ms']:9.2f} {ratio:>7s} {row['block_evals_per_step']:12.2f} "
            f"{row['nfe_per_step']:9.2f} {mem:>11s}"
        )
    m = r["methods"]
    if "cfg+ag naive" in m and "cfg+ag shared" in m:
        a, b = m["cfg+ag naive"], m["cfg+ag shared"]
        print(
            f"cfg+autoguidance, sharing vs naive 3 passes: blocks {b['block_evals_per_step'] / a['block_evals_per_step']:.3f}x, "
            f"time {b['step_ms'] / a['step_ms']:.3f}x"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", action="store_true", help="full-size random-weight transformers on CUDA (bf16)")
    parser.add_argument(
        "--dry-run", action="store_true", help="with --full-size: build on the meta device, count parameters"
    )
    parser.add_argument("--families", nargs="*", default=None, help="subset (cpu: flux cogview4 wan sd3 flux-medium)")
    parser.add_argument(
        "--methods", nargs="*", default=None, help="subset of methods (always include cfg and off for ratios)"
    )
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per run (>= 10: SLG's 1%%-20%% window)")
    parser.add_argument("--batch", type=int, default=None, help="samples per run (cpu 2, full size 1)")
    parser.add_argument("--repeats", type=int, default=5, help="cpu: timed runs per method (the best counts)")
    parser.add_argument("--threads", type=int, default=1, help="cpu: torch threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    args.batch = args.batch or (1 if args.full_size else 2)
    if args.full_size:
        if not args.dry_run and not torch.cuda.is_available():
            print("--full-size needs CUDA (or --dry-run)", file=sys.stderr)
            return 2
        report = bench_full(args)
        device = "meta" if args.dry_run else torch.cuda.get_device_name().replace(" ", "_")
        out = args.out or RESULTS / f"guidance_{device}.json"
    else:
        report = bench_cpu(args)
        device = platform.processor() or platform.machine()
        out = args.out or RESULTS / "guidance_cpu.json"
    meta = {
        "device": device,
        "torch": torch.__version__,
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads if not args.full_size else None,
        "command": " ".join(sys.argv),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": report}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
