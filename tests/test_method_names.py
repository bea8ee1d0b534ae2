"""The built-in method names are the same everywhere: "cfg" (the profile's default sampling) and "none";
the old name "baseline" is refused, naming "cfg", wherever a method or spec name is taken (as
`ditguide.evaluation.method` refuses it). Test profiles come from tests/params_tiny.yaml, through a
profile's `builder`, also where tests/ is not on sys.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ditguide.notebook import check_profile_specs, stage_parameters
from ditguide.profiles import ConfigError, load_params, load_profile
from tiny_profiles import TINY_PROFILES, tiny_params_file

REPO = Path(__file__).resolve().parents[1]
RENAMED = r"method 'baseline' is now called 'cfg' \(the pipeline's own sampling at the profile's default CFG scale"


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def _no_pipeline(monkeypatch):
    import ditguide.render

    monkeypatch.setattr(ditguide.render, "load_pipeline", lambda *a, **k: pytest.fail("loaded a pipeline"))


def test_guidance_spec_refuses_baseline_and_lists_cfg(params):
    from ditguide.render import guidance_spec

    toy = load_profile("toy", params)
    with pytest.raises(ConfigError, match=RENAMED + r", 1.5\), the same name on every model; use 'cfg'"):
        guidance_spec(toy, "baseline")
    with pytest.raises(
        ConfigError, match=r"spec='nope' is not a guidance spec of profile 'toy'; allowed: cfg, none, apg,"
    ):
        guidance_spec(toy, "nope")


def test_load_renderer_takes_cfg_and_refuses_baseline_before_loading(params, monkeypatch):
    from ditguide.render import load_renderer

    _no_pipeline(monkeypatch)
    with pytest.raises(ConfigError, match=RENAMED):
        load_renderer("toy", "baseline", params_path=params)
    for spec, scale in ((None, 1.5), ("cfg", 1.5), ("none", 1.0)):
        renderer = load_renderer("toy", spec, params_path=params, pipe=object())
        assert renderer.guidance is None and renderer.cfg_scale == scale, spec
    assert load_renderer("toy", "apg", params_path=params, pipe=object()).guidance is not None


def test_notebook_specs_refuse_baseline_and_pass_the_built_in_names(params):
    check_profile_specs("toy", params, ["cfg", "none", "apg"])
    with pytest.raises(ConfigError, match=RENAMED):
        check_profile_specs("toy", params, ["none", "baseline"])
    with pytest.raises(ConfigError, match=RENAMED):
        stage_parameters("evaluate_t2i", params, {"profile": "toy", "specs": ["baseline"]})


def test_tiny_profiles_load_from_their_params_file_outside_the_test_process(tmp_path):
    """A notebook kernel or a command line has no tests/ on sys.path: the builder is found by its path."""
    code = (
        "import sys; from ditguide.profiles import load_profile, pipeline_builder; "
        f"profiles = [load_profile(name, sys.argv[1]) for name in {list(TINY_PROFILES)!r}]; "
        "built = [pipeline_builder(p) for p in profiles]; "
        "print([p.model for p in profiles], {b.__module__ for b in built}, 'tiny_pipelines' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, tiny_params_file()], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['tiny:flux', 'tiny:wan'] {'ditguide_builder_tiny_pipelines'} False"
