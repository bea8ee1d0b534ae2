"""Run a jupytext percent-format notebook (.py) through papermill with parameters from params.yaml.

The .py file is the source of truth and the DVC dependency; the executed .ipynb under
notebooks/executed/ is a record for readers and never a dependency (its metadata changes on every
run). Usage, as in dvc.yaml:

    python -m ditguide.notebook notebooks/03_evaluate_t2i.py --stage evaluate_t2i

Everything is checked before the kernel starts: the parameter file, the profile and each of its
guidance specs, and that every parameter is one the notebook declares. The notebook receives the
parameter file as its `params_file`, so `--params other.yaml` takes profiles and specs from it too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .cli import add_debug_flag, one_line, run_reporting_user_errors
from .io import write_bytes_atomic
from .profiles import ConfigError, load_params, load_profile, refuse_renamed_method

EXECUTED_DIR = Path("notebooks/executed")
# Where the stages' notebooks write their outputs; listed at the end of a run.
OUTPUT_ROOTS = ("figures", "metrics", "paper/tables", "data/analysis")
# Exceptions raised inside a notebook that report a user's mistake (exit code 2, as outside one).
USER_ERROR_NAMES = {
    "ConfigError",
    "GuidanceSpecError",
    "GuidanceError",
    "EditError",
    "FamilyError",
    "ValueError",
    "FileNotFoundError",
    "MissingDataError",
    "MissingWeightsError",
    "ManifestMismatchError",
    "IncompleteOutputError",
    "VBenchEnvironmentError",
}


class NotebookFailed(RuntimeError):
    """A cell raised; `user_error` when its exception reports a bad input rather than a bug."""

    def __init__(self, message: str, user_error: bool):
        super().__init__(message)
        self.user_error = user_error


def stage_parameters(
    stage: str | None,
    params: dict,
    overrides: dict[str, Any] | None = None,
    params_file: str | os.PathLike = "params.yaml",
) -> dict[str, Any]:
    """The notebook parameters of `stage`: the profile, the stage's own section, `overrides` (-p), and
    `params_file`. The profile they name and its guidance specs are validated here, before any work."""
    out: dict[str, Any] = {"profile": params.get("profile")}
    if stage is not None:
        section = params.get(stage)
        if section is None:
            raise ConfigError(
                f"stage {stage!r} has no section in params.yaml; sections: "
                f"{sorted(k for k in params if k not in ('profile', 'profiles'))}"
            )
        if not isinstance(section, dict):
            raise ConfigError(f"params {stage}: expected a mapping of notebook parameters, got {section!r}")
        out.update(section)
    out.update(overrides or {})
    out["params_file"] = str(params_file)
    check_profile_specs(out["profile"], params, out.get("specs"))
    return out


def check_profile_specs(profile: str | None, params: dict, specs: Any = None) -> None:
    """The profile and the guidance specs a run will use (`specs`, default all of the profile's)."""
    prof = load_profile(profile, params)
    if specs is not None and (isinstance(specs, str) or not isinstance(specs, list)):
        raise ConfigError(
            f"specs={specs!r} is not allowed; allowed: null (every spec of the profile) or a list of names"
        )
    for name in specs or ():
        refuse_renamed_method(name, prof)
    names = list(prof.extra.get("guidance") or {}) if specs is None else [s for s in specs if s not in ("cfg", "none")]
    if names:
        from .render import check_against_config, guidance_spec  # imports torch: only when there is a spec to check

        # Each spec's shape, then its block edits against the model's config (meta device, no weights).
        check_against_config(prof, {name: guidance_spec(prof, name) for name in names})


def _check_declared(notebook_path: Path, source: Path, parameters: dict[str, Any]) -> None:
    import papermill

    declared = papermill.inspect_notebook(str(notebook_path))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ConfigError(f"{source}: no parameter(s) {unknown}; the notebook's parameters: {', '.join(declared)}")


def run_notebook(
    source: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict[str, Any],
    cwd: str | os.PathLike = ".",
    progress: bool = False,
) -> Path:
    """Execute `source` (.py, percent format) with `parameters`; write the executed notebook to `output`."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

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
        _check_declared(src_nb, source, parameters)
        partial = Path(tmp) / "executed.ipynb"
        try:
            papermill.execute_notebook(
                str(src_nb),
                str(partial),
                parameters=parameters,
                cwd=str(cwd),
                kernel_name="python3",
                progress_bar=progress,
                # Stream the cells' output (per-sample progress bars, summaries) to the console while they run.
                log_output=progress,
                stdout_file=sys.stdout if progress else None,
                stderr_file=sys.stderr if progress else None,
            )
        except PapermillExecutionError as err:
            raise NotebookFailed(
                f"{source}, cell {err.exec_count}: {err.ename}: {err.evalue}", user_error=err.ename in USER_ERROR_NAMES
            ) from err
        write_bytes_atomic(output, partial.read_bytes())  # the temporary folder may be on another filesystem
    return output


def written_since(start: float, roots: tuple[str, ...] = OUTPUT_ROOTS) -> list[Path]:
    """Files under `roots` modified since `start` (what a notebook run wrote), sorted."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file() and p.stat().st_mtime >= start]
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ditguide.notebook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("source", help="notebook .py (jupytext percent format)")
    ap.add_argument("--stage", help="params.yaml section whose keys become parameters")
    ap.add_argument("--params", default="params.yaml", help="parameter file (profiles, specs and the stage's section)")
    ap.add_argument(
        "-p", "--set", nargs=2, action="append", default=[], metavar=("NAME", "YAML_VALUE"), help="override a parameter"
    )
    ap.add_argument("--output", help="executed notebook path (default notebooks/executed/<name>.ipynb)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)

    def run() -> int:
        overrides = {name: yaml.safe_load(value) for name, value in args.set}
        parameters = stage_parameters(args.stage, load_params(args.params), overrides, params_file=args.params)
        output = Path(args.output) if args.output else EXECUTED_DIR / (Path(args.source).stem + ".ipynb")
        start = time.time() - 1  # file systems with 1 s timestamps
        try:
            run_notebook(args.source, output, parameters, progress=True)
        except NotebookFailed as err:
            if args.debug or not err.user_error:
                raise
            print(f"error: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
            return 2
        print(f"executed {args.source} -> {output}")
        written = [str(p) for p in written_since(start)]
        print(f"outputs written: {', '.join(written) if written else 'none'}")
        return 0

    return run_reporting_user_errors(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
