"""Profiles validate before any work; figures and tables are deterministic."""

import copy
from pathlib import Path

import pytest

from ditguide.profiles import ConfigError, load_params, load_pipeline, load_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def test_real_profiles_exist_with_hub_ids(params):
    assert load_profile("flux-dev", params).model == "black-forest-labs/FLUX.1-dev"
    assert load_profile("cogview4", params).model == "THUDM/CogView4-6B"
    wan = load_profile("wan2.1-t2v-1.3b", params)
    assert wan.model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and wan.kind == "video" and wan.num_frames == 81
    assert load_profile(None, params).name == "scenes"  # the compositional testbed is the default


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("steps", 0, r"profiles.toy.steps=0 is not allowed; allowed: an integer >= 1"),
        ("cfg_scale", float("nan"), r"profiles.toy.cfg_scale=nan is not allowed; allowed: a finite number >= 0"),
        ("family", "unet", r"profiles.toy.family='unet' is not allowed; allowed: toy, flux, cogview4, wan, sd3"),
        ("dtype", "float64", r"profiles.toy.dtype='float64' is not allowed"),
    ],
)
def test_out_of_range_parameters_name_the_parameter(params, key, value, message):
    bad = copy.deepcopy(params)
    bad["profiles"]["toy"][key] = value
    with pytest.raises(ConfigError, match=message):
        load_profile("toy", bad)


def test_unknown_profile_and_missing_checkpoint(params, tmp_path):
    with pytest.raises(ConfigError, match="allowed: clips, cogview4, flux-dev, scenes, toy, wan2.1-t2v-1.3b$"):
        load_profile("sdxl", params)
    bad = copy.deepcopy(params)
    bad["profiles"]["toy"]["model"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dvc repro train_toy"):
        load_pipeline(load_profile("toy", bad))


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda p: p["profiles"]["toy"].update(stepz=5),
            r"profiles.toy: unknown key\(s\) \['stepz'\]; allowed: .*guidance",
        ),
        (lambda p: p["profiles"].update(toy=5), r"profiles.toy: expected a mapping of settings"),
        (
            lambda p: p["profiles"]["toy"]["guidance"].update(cfg={"preset": "apg"}),
            r"profiles.toy.guidance.cfg: the name is reserved",
        ),
        (
            lambda p: p["profiles"]["toy"]["guidance"].update(none={"preset": "apg"}),
            r"guidance.none: the name is reserved",
        ),
        (
            lambda p: p["profiles"]["toy"]["guidance"].update(baseline={"preset": "apg"}),
            r"guidance.baseline: the name is reserved",
        ),
        (lambda p: p["profiles"]["toy"]["guidance"].update(ag=None), r"profiles.toy.guidance.ag: expected a mapping"),
        (
            lambda p: p["profiles"]["toy"].update(guidance=["apg"]),
            r"profiles.toy.guidance: expected a mapping \{name: spec\}",
        ),
        (
            lambda p: p["profiles"]["toy"]["guidance"].update({"a/b": {"preset": "apg"}}),
            r"spec name 'a/b' is not allowed",
        ),
    ],
)
def test_profile_schema_is_strict(params, edit, message):
    bad = copy.deepcopy(params)
    edit(bad)
    with pytest.raises(ConfigError, match=message):
        load_profile("toy", bad)


def test_profile_guidance_key_and_specs_are_accepted(params):
    assert set(load_profile("toy", params).extra["guidance"]) >= {"apg", "slg", "strong_weak"}


def test_toy_profile_at_another_size_than_trained_is_refused(params):
    bad = copy.deepcopy(params)
    bad["profiles"]["toy"]["height"] = 16
    with pytest.raises(ConfigError, match=r"profiles.toy.height/width = 16x8 is not allowed; allowed: 8x8"):
        load_pipeline(load_profile("toy", bad), root=REPO)


def test_the_papers_params_hold_no_test_profile(params):
    """Test profiles (random weights, built in code) live in tests/params_tiny.yaml, not in params.yaml."""
    for name, profile in params["profiles"].items():
        assert "builder" not in profile and not str(profile["model"]).startswith("tiny:"), name


def _built(profile) -> str:
    return f"built for {profile.name}"


BUILDER_FILE = """
class Pipe:
    def __init__(self, name):
        self.name, self.moves = name, []

    def to(self, *args, **kwargs):
        self.moves.append((args, kwargs))
        return self


def build(profile):
    return Pipe(profile.name)
"""


def test_builder_profile_gets_the_pipeline_its_function_builds(params, tmp_path):
    """`builder: package.module:function` or `path/file.py:function` builds the pipeline in code (nothing
    loads); load_pipeline moves it to the device and casts it to the profile's dtype."""
    import torch

    from ditguide.profiles import pipeline_builder

    params["profiles"]["coded"] = {"family": "flux", "kind": "image", "model": "x", "builder": f"{__name__}:_built"}
    assert pipeline_builder(load_profile("coded", params))(load_profile("coded", params)) == "built for coded"
    (tmp_path / "my_builders.py").write_text(BUILDER_FILE)
    params["profiles"]["coded"]["builder"] = f"{tmp_path / 'my_builders.py'}:build"
    pipe = load_pipeline(load_profile("coded", params), device="cpu")
    assert type(pipe).__name__ == "Pipe" and pipe.name == "coded" and pipe.moves == [(("cpu",), {})]
    params["profiles"]["coded"]["dtype"] = "bfloat16"
    pipe = load_pipeline(load_profile("coded", params), device="cpu")
    assert pipe.moves == [(("cpu",), {}), ((), {"dtype": torch.bfloat16})]


@pytest.mark.parametrize(
    "builder,message",
    [
        ("no_colon", r"profiles.coded.builder='no_colon' is not allowed; allowed: 'package.module:function'"),
        ("mod:1x", r"profiles.coded.builder='mod:1x' is not allowed"),
        (["a:b"], r"profiles.coded.builder=\['a:b'\] is not allowed"),
    ],
)
def test_bad_builder_fails_when_the_profile_loads(params, builder, message):
    params["profiles"]["coded"] = {"family": "flux", "kind": "image", "model": "x", "builder": builder}
    with pytest.raises(ConfigError, match=message):
        load_profile("coded", params)


def test_builder_that_cannot_be_imported_names_the_parameter(params, tmp_path):
    for builder, message in (
        ("ditguide_no_such_module:build", r"profiles.coded.builder='ditguide_no_such_module:build': cannot import"),
        (f"{tmp_path / 'absent.py'}:build", r"profiles.coded.builder=.*absent.py:build': cannot import .*no file"),
        (
            "ditguide.profiles:no_such_function",
            r"builder='ditguide.profiles:no_such_function' is not allowed; allowed: a function of ditguide.profiles",
        ),
    ):
        params["profiles"]["coded"] = {"family": "flux", "kind": "image", "model": "x", "builder": builder}
        with pytest.raises(ConfigError, match=message):
            load_pipeline(load_profile("coded", params))


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("profiles:\n  toy: [unclosed\n")
    with pytest.raises(ConfigError, match=r"other.yaml: not valid YAML \(line \d+, column \d+\)"):
        load_params(path)
    path.write_bytes(b"profiles: {}\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"other.yaml: not valid YAML"):
        load_params(path)


def test_real_profile_fails_cleanly_offline(params, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download black-forest-labs/FLUX.1-dev"):
        load_pipeline(load_profile("flux-dev", params))


def test_figures_are_byte_deterministic(tmp_path):
    import matplotlib.pyplot as plt

    from ditguide import style

    style.use()
    paths = []
    for run in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="cfg")
        ax.imshow([[0, 1], [1, 0]])
        ax.legend()
        paths.append(style.save_figure(fig, tmp_path / f"f{run}.pdf"))
        plt.close(fig)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert (tmp_path / "f0.png").read_bytes() == (tmp_path / "f1.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_latex_table_bolds_best_and_escapes():
    from ditguide.style import latex_table

    tex = latex_table(
        [("cfg_1", 2.0, 0.5), ("none", 1.0, 0.7)], ["method", "FD", "acc"], "c", "tab:x", bold_best={1: "min", 2: "max"}
    )
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"cfg\_1" in tex and r"\textbf{1.000}" in tex and r"\textbf{0.700}" in tex
