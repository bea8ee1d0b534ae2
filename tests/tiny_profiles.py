"""The tiny test profiles (tests/params_tiny.yaml) beside the paper's profiles (params.yaml), for tests.

    PARAMS = tiny_params_file()          # a params file: params.yaml plus tiny-flux and tiny-wan
    load_profile("tiny-flux", tiny_params())

The paper's params.yaml holds no test profile; the combined file is written once per process into a
temporary folder (removed at exit), with each `builder` path made absolute so that it loads from any
working directory (a notebook kernel, a subprocess).
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from pathlib import Path

import yaml

from ditguide.profiles import load_params

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "params_tiny.yaml"
TINY_PROFILES = ("tiny-flux", "tiny-wan")


@functools.cache
def _combined() -> dict:
    params = load_params(REPO / "params.yaml")
    tiny = yaml.safe_load(TINY_PARAMS.read_text(encoding="utf-8"))["profiles"]
    clash = sorted(set(tiny) & set(params["profiles"]))
    assert not clash, f"params.yaml and {TINY_PARAMS.name} both define {clash}"
    for profile in tiny.values():
        path, _, function = profile["builder"].rpartition(":")
        profile["builder"] = f"{REPO / path}:{function}"
    params["profiles"].update(tiny)
    return params


def tiny_params() -> dict:
    """params.yaml with the tiny profiles added (a fresh copy: callers may change it)."""
    return copy.deepcopy(_combined())


@functools.cache
def tiny_params_file() -> str:
    """The path of a params file holding `tiny_params()`."""
    folder = Path(tempfile.mkdtemp(prefix="ditguide-tiny-params-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(_combined(), sort_keys=False), encoding="utf-8")
    return str(path)
