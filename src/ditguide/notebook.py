"""Run a jupytext percent-format notebook (.py) through papermill with parameters from params.yaml.

The .py file is the source of truth and the DVC dependency; the executed .ipynb under
notebooks/executed/ is a record for readers and never a dependency (its metadata changes on every
run). Usage, as in dvc.yaml:

    python -m ditguide.notebook notebooks/03_evaluate_t2i.py --stage evaluate_t2i
"""

from __future__ import annotations

import argparse
import sys
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .profiles import load_params, load_profile

EXECUTED_DIR = Path("notebooks/executed")


def stage_parameters(stage: str | None, params: dict) -> dict[str, Any]:
    """The notebook parameters of `stage`: the active profile plus the stage's own section."""
    load_profile(params.get("profile"), params)  # validate the profile before any work starts
    out: dict[str, Any] = {"profile": params["profile"]}
    if stage is not None:
        section = params.get(stage)
        if section is None:
            raise KeyError(f"stage {stage!r} has no section in params.yaml; sections: {sorted(k for k in params if k not in ('profile', 'profiles'))}")
        out.update(section)
    return out


def run_notebook(source: str | os.PathLike, output: str | os.PathLike, parameters: dict[str, Any], cwd: str | os.PathLike = ".", progress: bool = False) -> Path:
    """Execute `source` (.py, percent format) with `parameters`; write the executed notebook to `output`."""
    import jupytext
    import papermill

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise FileNotFoundError(f"notebook source not found: {source}")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{source} has no cell tagged 'parameters' (write `# %% tags=[\"parameters\"]`)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src_nb = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, src_nb)
        partial = Path(tmp) / "executed.ipynb"
        papermill.execute_notebook(
            str(src_nb), str(partial), parameters=parameters, cwd=str(cwd), kernel_name="python3", progress_bar=progress,
            # Stream the cells' output (per-sample progress bars, summaries) to the console while they run.
            log_output=progress, stdout_file=sys.stdout if progress else None, stderr_file=sys.stderr if progress else None,
        )
        os.replace(partial, output) if partial.stat().st_dev == output.parent.stat().st_dev else output.write_bytes(partial.read_bytes())
    return output


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="notebook .py (jupytext percent format)")
    ap.add_argument("--stage", help="params.yaml section whose keys become parameters")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-p", "--set", nargs=2, action="append", default=[], metavar=("NAME", "YAML_VALUE"), help="override a parameter")
    ap.add_argument("--output", help="executed notebook path (default notebooks/executed/<name>.ipynb)")
    args = ap.parse_args(argv)
    parameters = stage_parameters(args.stage, load_params(args.params))
    for name, value in args.set:
        parameters[name] = yaml.safe_load(value)
    output = Path(args.output) if args.output else EXECUTED_DIR / (Path(args.source).stem + ".ipynb")
    run_notebook(args.source, output, parameters, progress=True)
    print(f"executed {args.source} -> {output}")


if __name__ == "__main__":
    main()
