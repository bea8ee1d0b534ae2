"""Train the embedded default's pieces (DVC stages train_toy and train_judge).

    python -m ditguide.toy model --out data/toy/model       # the toy DiT pipeline (params: train_toy)
    python -m ditguide.toy judge --out data/toy/judge.safetensors   # the metrics' judge (params: train_judge)

Every parameter is checked (names, types, ranges) before anything is trained or written; the outputs
are replaced atomically only when training has finished, so a failed run leaves the old ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from ..cli import add_debug_flag, run_reporting_user_errors, typed_section
from ..profiles import ConfigError, load_params
from ..style import write_text

JUDGE_PARAMETERS = {"seed": 0, "epochs": 400}  # train_judge's parameters and their defaults (types)


def _train_model(out: str, params: dict) -> None:
    from .train import ToyTrainConfig, train_toy

    defaults = {f.name: f.default for f in dataclasses.fields(ToyTrainConfig)}
    section = typed_section(params, "train_toy", defaults)
    try:
        cfg = ToyTrainConfig(**section)
    except ValueError as err:  # the config's range checks
        raise ConfigError(f"params train_toy: {err}") from None
    start = time.time()
    log = train_toy(out, cfg)
    print(
        f"trained toy model: {log['parameters']} parameters, final loss {log['final_loss_mean_last_100']:.4f}, "
        f"{time.time() - start:.0f} s"
    )
    print(f"wrote {out}")


def _train_judge(out: str, params: dict) -> None:
    import torch

    from .data import load_split, to_unit
    from .judge import check_judge_parameters, save_judge, train_judge

    section = typed_section(params, "train_judge", JUDGE_PARAMETERS)
    try:
        check_judge_parameters(**section)
    except ValueError as err:
        raise ConfigError(f"params train_judge: {err}") from None
    heldout, train = load_split("heldout"), load_split("train")
    judge = train_judge(to_unit(heldout.images), heldout.labels, **section)
    with torch.no_grad():
        acc = (judge(torch.from_numpy(to_unit(train.images))).argmax(1).numpy() == train.labels).mean()
    report = {"judge_accuracy_on_train_split": float(acc), "trained_on": "heldout", "heldout_size": len(heldout.labels)}
    report_path = out.rsplit(".", 1)[0] + "_report.json"
    save_judge(judge, out)
    write_text(report_path, json.dumps(report, indent=2) + "\n")
    print(f"trained judge on the held-out split; accuracy on the (unseen) train split: {acc:.4f}")
    print(f"wrote {out} and {report_path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ditguide.toy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["model", "judge"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)

    def run() -> None:
        params = load_params(args.params)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        (_train_model if args.what == "model" else _train_judge)(args.out, params)

    return run_reporting_user_errors(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
