"""Train the embedded default's pieces (DVC stages train_toy and train_judge).

    python -m ditguide.toy model --out data/toy/model       # the toy DiT pipeline (params: train_toy)
    python -m ditguide.toy judge --out data/toy/judge.safetensors   # the metrics' judge (params: train_judge)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..profiles import ConfigError, load_params
from ..style import write_text


def _section(params: dict, name: str, allowed: set[str]) -> dict:
    section = dict(params.get(name) or {})
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return section


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["model", "judge"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    if args.what == "model":
        from .train import ToyTrainConfig, train_toy

        cfg = ToyTrainConfig(**_section(params, "train_toy", set(ToyTrainConfig.__dataclass_fields__)))
        log = train_toy(args.out, cfg)
        print(f"trained toy model: {log['parameters']} parameters, final loss {log['final_loss_mean_last_100']:.4f}, {time.time() - start:.0f} s")
    else:
        from ..metrics.toy import save_judge, train_judge
        from .data import load_split, to_unit

        section = _section(params, "train_judge", {"seed", "epochs"})
        heldout, train = load_split("heldout"), load_split("train")
        judge = train_judge(to_unit(heldout.images), heldout.labels, **section)
        with torch.no_grad():
            acc = (judge(torch.from_numpy(to_unit(train.images))).argmax(1).numpy() == train.labels).mean()
        save_judge(judge, args.out)
        report = {"judge_accuracy_on_train_split": float(acc), "trained_on": "heldout", "heldout_size": len(heldout.labels)}
        write_text(args.out.rsplit(".", 1)[0] + "_report.json", json.dumps(report, indent=2) + "\n")
        print(f"trained judge on the held-out split; accuracy on the (unseen) train split: {acc:.4f}")


if __name__ == "__main__":
    main()
