"""Train the testbeds (DVC stages). Parameters come from params.yaml and are validated first.

python -m ditguide.testbeds scenes --out data/scenes          # model + twin_early + twin_shallow
python -m ditguide.testbeds scenes-judge --out data/scenes/judge.safetensors
python -m ditguide.testbeds clips --out data/clips               # T2V testbed: model + twin_early
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..cli import add_debug_flag, run_reporting_user_errors
from ..profiles import ConfigError, load_params


def _section(params: dict, name: str, allowed: set[str]) -> dict:
    section = params.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: expected a mapping of parameters, got {section!r}")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(section)


def _run(args) -> int:
    start = time.time()
    params = load_params(args.params)
    # Every parameter is validated before anything is trained or written (outputs are replaced only
    # at the very end, atomically).
    if args.what == "scenes":
        from .train import ScenesTrainConfig, train_scenes

        cfg = ScenesTrainConfig(**_section(params, "train_scenes", set(ScenesTrainConfig.__dataclass_fields__)))
    elif args.what == "clips":
        from .train_t2v import ClipsTrainConfig, train_clips

        ccfg = ClipsTrainConfig(**_section(params, "train_toy_t2v", set(ClipsTrainConfig.__dataclass_fields__)))
    else:
        from .judge import JudgeTrainConfig, train_and_save_judge

        jcfg = JudgeTrainConfig(**_section(params, "train_scenes_judge", set(JudgeTrainConfig.__dataclass_fields__)))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "scenes":
        summary = train_scenes(args.out, cfg)
        for name in ("model", "twin_early", "twin_shallow"):
            s = summary[name]
            print(
                f"{args.out}/{name}: {s['parameters']:,} parameters, {s['steps_trained']} steps, "
                f"final loss {s['final_loss_mean_last_100']:.4f}"
            )
    elif args.what == "clips":
        summary = train_clips(args.out, ccfg)
        for name in ("model", "twin_early"):
            s = summary[name]
            print(
                f"{args.out}/{name}: {s['parameters']:,} parameters, {s['steps_trained']} steps, "
                f"final loss {s['final_loss_mean_last_100']:.4f}"
            )
    else:
        report = train_and_save_judge(args.out, jcfg)
        print(json.dumps(report["accuracy_on_train_pool_renders"], indent=2))
        print(f"wrote {args.out} and its report")
    print(f"done in {time.time() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["scenes", "scenes-judge", "clips"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_reporting_user_errors(lambda: _run(args), debug=args.debug, prog="ditguide.testbeds")


if __name__ == "__main__":
    sys.exit(main())
