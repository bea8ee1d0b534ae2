"""Failures lose nothing and are reported early and in one line (issue 10).

- a DVC stage that fails on a bad parameter leaves every committed output as it was;
- bad inputs fail before any file is written (not even a manifest);
- every command line reports a user error in one line on stderr, exit code 2.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _env(src: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(src), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONHOME", None)
    return env


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def scratch_clone(tmp_path):
    """A clone of the repository with the working tree's code, pipeline and parameters committed."""
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(REPO), str(clone))
    for rel in ("src", "notebooks"):
        shutil.rmtree(clone / rel)
        shutil.copytree(REPO / rel, clone / rel, ignore=shutil.ignore_patterns("__pycache__", "executed"))
    for rel in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy2(REPO / rel, clone / rel)
    _git(clone, "add", "-A")
    _git(clone, "commit", "-q", "--allow-empty", "-m", "tree under test")
    return clone


def _edit_params(clone: Path, edit) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    edit(params)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _repro(clone: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "dvc"), "repro", "-s", stage],
        cwd=clone,
        env=_env(clone / "src"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "stage,edit,message",
    [
        # YAML reads 1e-4 as a string: once a TypeError after DVC had deleted data/toy/model.
        ("train_toy", lambda p: p["train_toy"].update(lr="1e-4"), "train_toy.lr='1e-4' is not allowed"),
        ("train_judge", lambda p: p["train_judge"].update(epochs=0), "epochs=0 is not allowed"),
        # A preset typo: once the six committed figures, metrics and table were deleted.
        (
            "evaluate_t2i",
            lambda p: p["profiles"]["toy"]["guidance"]["apg"].update(preset="apgg"),
            "profiles.toy.guidance.apg: preset name = 'apgg'",
        ),
        (
            "evaluate_t2i",
            lambda p: p["evaluate_t2i"].update(samples_per_clas=3),
            "no parameter(s) ['samples_per_clas']",
        ),
    ],
    ids=["train_toy-lr-string", "train_judge-epochs-0", "evaluate_t2i-preset-typo", "evaluate_t2i-unknown-parameter"],
)
def test_failed_stage_leaves_committed_outputs(scratch_clone, stage, edit, message):
    _edit_params(scratch_clone, edit)
    run = _repro(scratch_clone, stage)
    assert run.returncode != 0
    assert message in run.stderr + run.stdout
    # Only the edited parameter file differs: no output deleted or rewritten, dvc.lock untouched.
    assert _git(scratch_clone, "status", "--porcelain").splitlines() == [" M params.yaml"]


def test_every_committed_stage_output_persists():
    """DVC deletes a non-persistent output before its stage runs; cache: false outputs come back only from git."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for section in ("outs", "metrics"):
            for out in body.get(section, []):
                ((path, flags),) = out.items()
                assert flags.get("persist") is True, f"{name}: {path} is not persist: true"


# ---- nothing is written before validation passes -------------------------------------------------


def _toy_params(tmp_path: Path, guidance: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profiles"]["toy"]["model"] = str(REPO / "data/toy/model")
    params["profiles"]["toy"]["guidance"] = guidance
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _no_weights(monkeypatch):
    """Loading any pipeline or weights file fails the test: validation must come first."""
    import safetensors.torch

    import ditguide.profiles
    import ditguide.render

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before validation")

    for module, name in (
        (ditguide.render, "load_pipeline"),
        (ditguide.profiles, "load_pipeline"),
        (safetensors.torch, "load_file"),
        (safetensors.torch, "safe_open"),
    ):
        monkeypatch.setattr(module, name, refuse)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_bad_block_address_leaves_no_files(tmp_path, monkeypatch):
    from ditguide.generate import generate
    from ditguide.profiles import ConfigError
    from ditguide.render import load_renderer

    params = _toy_params(tmp_path, {"far": {"preset": "slg", "blocks": ["single:9"]}})
    before = _files(tmp_path)
    with monkeypatch.context() as m:
        _no_weights(m)  # the toy's blocks are checked on its config.json, before its weights load
        with pytest.raises(ConfigError, match=r"profiles.toy.guidance.far: .*single:9"):
            load_renderer("toy", "far", params_path=params)
    # A renderer given a pipeline (the Python API) still checks before writing anything.
    renderer = load_renderer("toy", None, params_path=params)
    renderer.guidance = load_renderer("toy", "far", params_path=params, pipe=renderer.pipe).guidance
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="single:9"):
        generate(renderer, ["a handwritten digit one"], out, progress=False)
    assert _files(tmp_path) == before


# Tiny transformer configs of the real families, with the profile keys each needs and a block
# address that exists in the tiny model and one that does not.
REAL_FAMILIES = {
    "flux": ({"kind": "image", "height": 16, "width": 16}, "single:1", "single:9"),
    "cogview4": ({"kind": "image", "height": 16, "width": 16}, "blocks:1", "blocks:9"),
    "wan": ({"kind": "video", "height": 32, "width": 32, "num_frames": 5, "fps": 8}, "blocks:1", "blocks:9"),
}


def _real_profile_without_weights(tmp_path: Path, family: str, blocks: list[str]) -> Path:
    """params.yaml with a profile `real` of `family` whose model folder holds transformer/config.json
    (a tiny config) and nothing else: no weights, no model_index.json, no text encoders."""
    import json

    from ditguide.families.tiny import TINY_CONFIGS, _model_class

    model = tmp_path / f"{family}-model"
    (model / "transformer").mkdir(parents=True)
    config = {"_class_name": _model_class(family).__name__, **TINY_CONFIGS[family]}
    (model / "transformer" / "config.json").write_text(json.dumps(config))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profiles"]["real"] = {
        "family": family,
        "model": str(model),
        "dtype": "float32",
        "steps": 4,
        **REAL_FAMILIES[family][0],
        "guidance": {"far": {"preset": "slg", "blocks": blocks}},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize("family", sorted(REAL_FAMILIES))
def test_real_profile_bad_block_address_fails_on_the_config_without_weights(tmp_path, monkeypatch, family):
    from ditguide.evaluation_real import evaluate_t2i_real, evaluate_t2v
    from ditguide.notebook import stage_parameters
    from ditguide.profiles import ConfigError, load_params, load_profile
    from ditguide.render import check_against_config, guidance_spec, load_renderer

    _, good, bad = REAL_FAMILIES[family]
    params = _real_profile_without_weights(tmp_path, family, [bad])
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))
    before = _files(tmp_path)
    _no_weights(monkeypatch)
    message = rf"profiles.real.guidance.far: .*{bad}.* out of range"
    with pytest.raises(ConfigError, match=message):
        load_renderer("real", "far", params_path=params)
    with pytest.raises(ConfigError, match=message):  # the notebook runner, before the kernel starts
        stage_parameters("evaluate_t2i", load_params(params), {"profile": "real"}, params_file=params)
    with pytest.raises(ConfigError, match=message):  # before the COCO data, judges and VBench are looked at
        if REAL_FAMILIES[family][0]["kind"] == "image":
            evaluate_t2i_real("real", params=params, data_dir=tmp_path / "no-coco", runs_dir=tmp_path / "runs")
        else:
            evaluate_t2v("real", params=params, runs_dir=tmp_path / "runs", vbench_python=tmp_path / "no-vbench")
    assert _files(tmp_path) == before  # nothing written, not even a manifest or a runs/ folder
    # The same check passes an address the model has: it reads the blocks from the config.
    ok = yaml.safe_load(_real_profile_without_weights(tmp_path / "ok", family, [good]).read_text())
    prof = load_profile("real", ok)
    check_against_config(prof, {"far": guidance_spec(prof, "far")})


def test_local_model_skeleton_takes_the_class_from_its_config_and_checks_prompts(tmp_path, monkeypatch):
    """A local (toy-family) model of another transformer class, e.g. a Wan video testbed: the skeleton
    is built from the config's `_class_name`, and its prompt encoder (any component name) checks words."""
    import json

    from ditguide.families.tiny import TINY_CONFIGS
    from ditguide.guidance import GuidanceSpec, preset
    from ditguide.profiles import ConfigError, Profile
    from ditguide.render import check_against_config, model_skeleton

    model = tmp_path / "video-model"
    (model / "transformer").mkdir(parents=True)
    (model / "text_encoder").mkdir()
    (model / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "WanTransformer3DModel", **TINY_CONFIGS["wan"]})
    )
    (model / "text_encoder" / "config.json").write_text(
        json.dumps({"_class_name": "ToyPromptEncoder", "max_length": 4})
    )
    (model / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "SomeVideoPipeline",
                "text_encoder": ["ditguide.toy.prompt_encoder", "ToyPromptEncoder"],
                "transformer": ["diffusers", "WanTransformer3DModel"],
            }
        )
    )
    prof = Profile(name="clip", family="toy", kind="video", model=str(model), height=16, width=16, num_frames=5)
    _no_weights(monkeypatch)
    transformer, encoder = model_skeleton(prof)
    assert type(transformer).__name__ == "WanTransformer3DModel" and encoder.config.max_length == 4
    assert next(transformer.parameters()).is_meta
    check_against_config(prof, {"ok": GuidanceSpec.from_dict(preset("stg", blocks=["blocks:1"]))}, ["a one"])
    with pytest.raises(ConfigError, match=r"profiles.clip.guidance.far: .*blocks:9"):
        check_against_config(prof, {"far": GuidanceSpec.from_dict(preset("stg", blocks=["blocks:9"]))})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        check_against_config(prof, {}, ["a purple one"])


def test_generate_cli_refuses_a_bad_block_address_before_loading_weights(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    params = _real_profile_without_weights(tmp_path, "flux", ["single:9"])
    run = _cli(
        tmp_path,
        "ditguide.generate",
        "--profile",
        "real",
        "--spec",
        "far",
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "o"),
        "--params",
        str(params),
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "profiles.real.guidance.far" in lines[0] and "single:9" in lines[0], run.stderr
    assert not (tmp_path / "o").exists()


def test_long_prompt_mid_list_fails_before_the_first_sample(tmp_path):
    from ditguide.generate import generate
    from ditguide.render import load_renderer

    renderer = load_renderer("toy", None, params_path=_toy_params(tmp_path, {}))
    prompts = ["a handwritten digit one", "a handwritten digit two", "one " * 9]
    with pytest.raises(ValueError, match="at most 8"):
        generate(renderer, prompts, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluate_t2i_checks_every_spec_before_the_first_method_renders(tmp_path):
    from ditguide.evaluation import evaluate_t2i_toy

    params = yaml.safe_load(
        _toy_params(tmp_path, {"ok": {"preset": "apg"}, "far": {"preset": "slg", "blocks": ["double:5"]}}).read_text()
    )
    with pytest.raises(ValueError, match="double:5"):
        evaluate_t2i_toy(
            "toy",
            samples_per_class=1,
            params=params,
            judge_path=str(REPO / "data/toy/judge.safetensors"),
            runs_dir=str(tmp_path / "runs"),
        )
    assert not (tmp_path / "runs").exists()  # none and cfg did not render first


# ---- resume: refuse what cannot be attributed, repair what is damaged ----------------------------


class _GreyRenderer:
    """Renders sample i as a flat 4x4 image of grey level i (deterministic, no model)."""

    kind = "image"
    base_seed = 0

    def __init__(self):
        self.rendered: list[int] = []

    def describe(self) -> dict:
        return {"renderer": "grey", "height": 4, "width": 4}

    def render(self, prompts, indices):
        self.rendered += list(indices)
        return [np.full((4, 4, 3), i, dtype=np.uint8) for i in indices]


def test_samples_without_manifest_are_refused(tmp_path):
    from ditguide.generate import ManifestMismatchError, generate

    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "00000.png").write_bytes(b"old run")
    with pytest.raises(ManifestMismatchError, match="no manifest.json"):
        generate(_GreyRenderer(), ["a", "b"], tmp_path, progress=False)
    assert not (tmp_path / "manifest.json").exists()


def test_repair_renders_corrupt_and_wrong_size_samples_again(tmp_path):
    from PIL import Image

    from ditguide.generate import IncompleteOutputError, generate, verify

    generate(_GreyRenderer(), ["a", "b", "c"], tmp_path, progress=False)
    (tmp_path / "samples" / "00000.png").write_bytes(b"")  # truncated
    Image.new("RGB", (8, 8)).save(tmp_path / "samples" / "00002.png")  # wrong size
    with pytest.raises(IncompleteOutputError, match="--repair") as err:
        verify(tmp_path)
    assert set(err.value.corrupt) == {0, 2} and "8x8 image, the run renders 4x4" in err.value.corrupt[2]
    renderer = _GreyRenderer()
    summary = generate(renderer, ["a", "b", "c"], tmp_path, progress=False, repair=True)
    assert (summary.repaired, summary.rendered, summary.skipped) == (2, 2, 1)
    assert renderer.rendered == [0, 2]
    assert len(verify(tmp_path)) == 3


class _GreyVideoRenderer:
    """Renders sample i as `frames` flat frames of grey level 40 (i + 1), 8 wide and 8 high."""

    kind, fps, base_seed = "video", 8, 0

    def __init__(self, frames=3, height=8, width=8):
        self.shape = (frames, height, width, 3)
        self.rendered: list[int] = []

    def describe(self) -> dict:
        return {"renderer": "grey-video", "num_frames": 3, "height": 8, "width": 8}

    def render(self, prompts, indices):
        self.rendered += list(indices)
        return [np.full(self.shape, 40 * (i + 1), dtype=np.uint8) for i in indices]


def test_verify_and_repair_catch_videos_of_the_wrong_length_or_size(tmp_path):
    from ditguide.generate import IncompleteOutputError, _write_mp4, generate, verify

    prompts = ["a", "b", "c", "d"]
    generate(_GreyVideoRenderer(), prompts, tmp_path, samples_per_prompt=1, progress=False)
    assert len(verify(tmp_path)) == 4
    samples = tmp_path / "samples"
    _write_mp4(samples / "a-0.mp4", np.zeros((5, 8, 8, 3), np.uint8), 8, 18)  # 5 frames, not 3
    _write_mp4(samples / "b-0.mp4", np.zeros((3, 8, 16, 3), np.uint8), 8, 18)  # 16 wide, not 8
    _write_mp4(samples / "c-0.mp4", np.zeros((3, 6, 8, 3), np.uint8), 8, 18)  # 6 high, not 8
    with pytest.raises(IncompleteOutputError, match="--repair") as err:
        verify(tmp_path)
    assert set(err.value.corrupt) == {0, 1, 2}
    assert err.value.corrupt[0] == "5 frames of 8x8 video, the run renders 3 frames of 8x8"
    assert "16x8" in err.value.corrupt[1] and "8x6" in err.value.corrupt[2]
    renderer = _GreyVideoRenderer()
    summary = generate(renderer, prompts, tmp_path, samples_per_prompt=1, progress=False, repair=True)
    assert (summary.repaired, summary.rendered, summary.skipped) == (3, 3, 1) and renderer.rendered == [0, 1, 2]
    assert len(verify(tmp_path)) == 4


def test_renderer_output_of_another_size_than_the_manifest_is_refused_before_saving(tmp_path):
    from ditguide.generate import generate

    with pytest.raises(ValueError, match="sample 0: 4 frames of 8x8, but the run records 3 frames of 8x8"):
        generate(_GreyVideoRenderer(frames=4), ["a"], tmp_path, samples_per_prompt=1, progress=False)
    assert not list((tmp_path / "samples").iterdir())
    with pytest.raises(ValueError, match="sample 0: 12x8, but the run records 4x4"):
        generate(
            type("Wide", (_GreyRenderer,), {"render": lambda self, p, i: [np.zeros((8, 12, 3), np.uint8)]})(),
            ["a"],
            tmp_path / "img",
            progress=False,
        )


def test_wan_profile_frame_count_is_one_wan_renders():
    from ditguide.profiles import ConfigError, load_params, load_profile

    params = load_params(REPO / "params.yaml")
    params["profiles"]["wan2.1-t2v-1.3b"]["num_frames"] = 8
    with pytest.raises(
        ConfigError, match=r"profiles.wan2.1-t2v-1.3b.num_frames=8 is not allowed; allowed: 4k \+ 1 frames"
    ):
        load_profile("wan2.1-t2v-1.3b", params)


def test_damaged_manifest_names_the_file(tmp_path):
    from ditguide.generate import ManifestMismatchError, generate

    generate(_GreyRenderer(), ["a"], tmp_path, progress=False)
    (tmp_path / "manifest.json").write_text('{"format": "ditguide.gen')
    with pytest.raises(ManifestMismatchError, match=r"manifest.json is damaged \(JSONDecodeError"):
        generate(_GreyRenderer(), ["a"], tmp_path, progress=False)


# ---- the notebook runner takes everything from --params ------------------------------------------


def test_notebook_parameters_come_from_the_given_params_file(tmp_path):
    from ditguide.notebook import stage_parameters
    from ditguide.profiles import ConfigError, load_params

    path = _toy_params(tmp_path, {"typo": {"preset": "apgg"}})
    with pytest.raises(ConfigError, match="profiles.toy.guidance.typo: preset name = 'apgg'"):
        stage_parameters("evaluate_t2i", load_params(path), {"profile": "toy"}, params_file=path)
    path = _toy_params(tmp_path, {"mine": {"preset": "apg"}})
    parameters = stage_parameters("evaluate_t2i", load_params(path), {"profile": "toy"}, params_file=path)
    assert parameters["params_file"] == str(path) and parameters["profile"] == "toy"
    with pytest.raises(ConfigError, match="specs='mine' is not allowed"):
        stage_parameters("evaluate_t2i", load_params(path), {"profile": "toy", "specs": "mine"}, params_file=path)


# ---- command lines: one line, exit code 2 --------------------------------------------------------


def _cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=_env(REPO / "src"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("caf\xe9 one\n".encode("latin-1"))
    broken_json = tmp_path / "prompts.json"
    broken_json.write_text('["one", ')
    bad_params = tmp_path / "bad.yaml"
    bad_params.write_text("profiles: {toy: 5}\ntrain_toy: {lr: 1e-4}\n")
    return {
        "generate-non-utf8": (
            ["ditguide.generate", "--profile", "toy", "--prompts", str(latin1), "--out", str(tmp_path / "o")],
            "prompts.txt: not UTF-8",
        ),
        "generate-json": (
            ["ditguide.generate", "--profile", "toy", "--prompts", str(broken_json), "--out", str(tmp_path / "o")],
            "prompts.json: not valid JSON (line 1",
        ),
        "notebook-profile": (
            [
                "ditguide.notebook",
                "notebooks/03_evaluate_t2i.py",
                "--stage",
                "train_toy",
                "--params",
                str(bad_params),
                "-p",
                "profile",
                "toy",
            ],
            "profiles.toy: expected a mapping",
        ),
        "toy-lr": (
            ["ditguide.toy", "model", "--out", str(tmp_path / "m"), "--params", str(bad_params)],
            "train_toy.lr='1e-4' is not allowed",
        ),
        "coco-missing": (
            ["ditguide.coco", "reference", "--data-dir", str(tmp_path / "none"), "--resolution", "256"],
            str(tmp_path / "none"),
        ),
    }


@pytest.mark.parametrize("case", ["generate-non-utf8", "generate-json", "notebook-profile", "toy-lr", "coco-missing"])
def test_cli_user_error_is_one_line_with_exit_code_2(tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    run = _cli(tmp_path, *args)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error: ", "python -m ditguide.coco: error: ")), run.stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


# Remedies only a Python caller can apply: a CLI user reading them has nothing to type.
PYTHON_ONLY_REMEDY = r"\bpass `?\w+=|\bdelete_corrupt\b|\bevaluate_t2i_toy\b|repair=True|\bnames=|Python:"


def test_error_messages_suggest_no_python_only_remedy():
    """Every raise in src/ditguide: a message that names a Python argument or function as the fix
    must also name the command-line flag (`--...`) that does the same."""
    import ast
    import re

    offenders = []
    for path in sorted((REPO / "src" / "ditguide").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = "".join(
                    c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
                if re.search(PYTHON_ONLY_REMEDY, text) and "--" not in text:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:100]!r}")
    assert not offenders, "\n".join(offenders)


def test_incomplete_and_unnameable_outputs_name_the_cli_flags(tmp_path):
    import re

    from ditguide.generate import IncompleteOutputError, generate, plan_samples, verify

    generate(_GreyRenderer(), ["a", "b"], tmp_path, progress=False)
    (tmp_path / "samples" / "00001.png").write_bytes(b"")
    with pytest.raises(IncompleteOutputError) as err:
        verify(tmp_path)
    assert "--repair" in str(err.value) and not re.search(PYTHON_ONLY_REMEDY, str(err.value))
    for prompts in (["a cat / a dog"], ["x" * 300]):
        with pytest.raises(ValueError, match="--names FILE"):
            plan_samples(prompts, "video")
    with pytest.raises(ValueError, match="--names FILE"):
        plan_samples(["a", "a"], "image", names=["n", "n"])


def test_generate_cli_names_flag(tmp_path, monkeypatch, capsys):
    import ditguide.render
    from ditguide import generate as gen

    monkeypatch.setattr(ditguide.render, "load_renderer", lambda *a, **k: _GreyVideoRenderer())
    (tmp_path / "prompts.txt").write_text("a cat / a dog\n")
    (tmp_path / "names.txt").write_text("cat-dog-0\ncat-dog-1\n")
    args = [
        "--profile",
        "wan2.1-t2v-1.3b",  # a video profile; the renderer is a stand-in (nothing loads)
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--out",
        str(tmp_path / "o"),
        "--samples-per-prompt",
        "2",
        "--no-progress",
    ]
    assert gen.main(args) == 2  # the prompt cannot be a VBench file name
    assert "--names FILE" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert gen.main([*args, "--names", str(tmp_path / "names.txt")]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "samples").iterdir()) == ["cat-dog-0.mp4", "cat-dog-1.mp4"]


def test_cli_debug_shows_the_traceback(tmp_path):
    args, _ = _bad_inputs(tmp_path)["toy-lr"]
    run = _cli(tmp_path, *args, "--debug")
    assert run.returncode != 0 and "Traceback (most recent call last)" in run.stderr


# ---- parameters that once passed silently ---------------------------------------------------------


def test_preset_blocks_given_as_one_string_is_one_block():
    from ditguide.guidance import GuidanceSpecError, preset

    spec = preset("slg", blocks="single:1")
    (edit,) = spec["branches"]["skip"]["edits"]["edits"]
    assert edit["blocks"] == ["single:1"]  # once ['s', 'i', 'n', ...]
    with pytest.raises(GuidanceSpecError, match="must be a block or a list of blocks"):
        preset("slg", blocks={"single": 1})


@pytest.mark.slow  # three CLI runs that each load torch and the toy pipeline: ~45 s on 2 busy cores
def test_generate_cli_reports_a_corrupt_sample_in_one_line_and_repairs_it(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit one\na handwritten digit two\n")
    params = _toy_params(tmp_path, {})
    args = [
        "ditguide.generate",
        "--profile",
        "toy",
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "o"),
        "--params",
        str(params),
        "--no-progress",
    ]
    assert _cli(tmp_path, *args).returncode == 0
    (tmp_path / "o" / "samples" / "00001.png").write_bytes(b"")
    run = _cli(tmp_path, *args)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error") or "Traceback" in line]
    assert run.returncode == 2 and len(errors) == 1 and "1 corrupt (indices 1" in errors[0] and "--repair" in errors[0]
    run = _cli(tmp_path, *args, "--repair")
    assert run.returncode == 0 and "1 rendered (1 damaged files rendered again), 1 reused" in run.stdout
