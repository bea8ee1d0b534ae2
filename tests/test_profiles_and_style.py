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
    with pytest.raises(ConfigError, match="allowed: cogview4, flux-dev, scenes, tiny-flux, tiny-wan, toy, wan2.1-t2v-1.3b"):
        load_profile("sdxl", params)
    bad = copy.deepcopy(params)
    bad["profiles"]["toy"]["model"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dvc repro train_toy"):
        load_pipeline(load_profile("toy", bad))


def test_real_profile_fails_cleanly_offline(params, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download black-forest-labs/FLUX.1-dev"):
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

    tex = latex_table([("cfg_1", 2.0, 0.5), ("none", 1.0, 0.7)], ["method", "FD", "acc"], "c", "tab:x", bold_best={1: "min", 2: "max"})
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"cfg\_1" in tex and r"\textbf{1.000}" in tex and r"\textbf{0.700}" in tex
