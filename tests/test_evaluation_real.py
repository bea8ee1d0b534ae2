"""The real-model evaluation path (text prompts -> pipeline -> files -> FID/CLIP-SIM or VBench) on tiny
random pipelines: profiles tiny-flux and tiny-wan (tests/params_tiny.yaml: `model: tiny:<family>`, built by
tests/tiny_pipelines.py through the profile's `builder`), a fake COCO split prepared
by the real `python -m ditguide.coco` steps, a tiny feature extractor and a tiny open_clip model, and
VBench's real API in its own environment (temporal_flickering needs no weights). Without the VBench
environment the video tests fail, saying how to make it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditguide import coco
from ditguide import generate as gen
from ditguide.benchmark.vbench import suite_subset, vbench_summary
from ditguide.evaluation_real import evaluate_t2i_real, evaluate_t2v
from ditguide.metrics import vbench_score as vb
from ditguide.metrics.clip_sim import ClipSim
from ditguide.metrics.fid import features_path, fid_from_features, image_features
from ditguide.profiles import ConfigError, load_params, load_pipeline, load_profile
from tiny_pipelines import TINY_CALL, tiny_text_pipeline
from tiny_profiles import tiny_params_file

REPO = Path(__file__).resolve().parents[1]
PARAMS = tiny_params_file()  # params.yaml and the tiny profiles
N_TEST = 6


class TinyExtractor(torch.nn.Module):
    """Stand-in for Inception: (B, 3, 299, 299) in [0, 255] -> (B, 6)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.pool = torch.nn.AvgPool2d(23)
            self.fc = torch.nn.Linear(3 * 13 * 13, 6)

    def forward(self, x):
        return self.fc(self.pool(x / 255.0).flatten(1))


def tiny_clip() -> ClipSim:
    """RESEARCH.md's tiny open_clip config; random weights, the same ones in every call."""
    clip = ClipSim(
        "ViT-B-32",
        pretrained=None,
        batch_size=4,
        model_kwargs=dict(
            embed_dim=32,
            vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip._load()
    return clip


def write_fake_coco(data_dir: Path, n_images: int = 10) -> None:
    """A COCO-format captions file (several captions per image) and JPEGs of assorted sizes."""
    rng = np.random.default_rng(7)
    words = ["a red bus", "two cats", "a kite over a beach", "pizza on a table", "a man skiing", "green trees"]
    images, annotations = [], []
    (data_dir / coco.IMAGES_DIRNAME).mkdir(parents=True)
    for k in range(n_images):
        image_id = 100 + 3 * k
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name})
        for c in range(2):
            annotations.append(
                {"id": 10 * k + c, "image_id": image_id, "caption": f"{words[(k + c) % len(words)]} number {k}"}
            )
        base = rng.integers(40, 200, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 30, (40 + 2 * k, 50, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(data_dir / coco.IMAGES_DIRNAME / name, quality=90)
    path = data_dir / coco.CAPTIONS_MEMBER
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("coco2017")
    write_fake_coco(data)
    assert coco.main(["sample", "--data-dir", str(data), "--n-test", str(N_TEST), "--n-dev", "2"]) == 0
    assert (
        coco.main(["reference", "--data-dir", str(data), "--split", "test", "--resolution", "256", "--workers", "1"])
        == 0
    )
    return data


def t2i(coco_dir, runs, **kw):
    args = dict(
        split="test",
        resolution=256,
        specs=["ag"],
        batch_size=4,
        params=PARAMS,
        data_dir=coco_dir,
        runs_dir=runs,
        device="cpu",
        fid_extractor=TinyExtractor().eval(),
        fid_extractor_id="tiny-test",
        clip=tiny_clip(),
        num_workers=0,
    )
    return evaluate_t2i_real("tiny-flux", **{**args, **kw})


def test_tiny_profiles_take_text_prompts():
    """`model: tiny:<family>` (through the profile's builder) loads a random pipeline whose own text
    encoders encode text prompts."""
    params = load_params(PARAMS)
    pipe = load_pipeline(load_profile("tiny-flux", params))
    assert type(pipe).__name__ == "FluxPipeline" and pipe.text_encoder is not None and pipe.text_encoder_2 is not None
    a = pipe.encode_prompt(["a red bus"], prompt_2=None, device="cpu")
    b = pipe.encode_prompt(["two cats"], prompt_2=None, device="cpu")
    assert a[0].shape == (1, 512, 32) and a[1].shape == (1, 32)  # T5 tokens x joint dim; CLIP pooled
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])  # the text reaches the embeddings
    builder = params["profiles"]["tiny-flux"]["builder"]
    params["profiles"]["bad-tiny"] = {"family": "wan", "kind": "video", "model": "tiny:flux", "num_frames": 5}
    params["profiles"]["bad-tiny"]["builder"] = builder
    with pytest.raises(ConfigError, match=r"profiles.bad-tiny.model='tiny:flux' is not allowed"):
        load_pipeline(load_profile("bad-tiny", params))


@pytest.mark.parametrize("family", ["flux", "wan", "cogview4"])
def test_tiny_text_pipelines_render_from_text(family):
    """Every tiny text pipeline encodes text with its own encode_prompt and renders from it, deterministically."""
    from ditguide.seeding import sample_generators

    pipe = tiny_text_pipeline(family)

    def render(prompt):
        out = pipe(
            prompt=[prompt],
            num_inference_steps=2,
            output_type="np",
            generator=sample_generators([0]),
            **TINY_CALL[family],
        )
        return np.asarray(out.frames if family == "wan" else out.images)

    a, b = render("a red bus"), render("two cats on a mat")
    assert np.isfinite(a).all() and not np.allclose(a, b)  # the prompt changes the output
    np.testing.assert_array_equal(a, render("a red bus"))  # and the same prompt gives the same output
    assert np.array_equal(pipe.tokenizer("A Cat!")["input_ids"], pipe.tokenizer("a cat!")["input_ids"])


def test_t2i_real_on_tiny_flux(coco_dir, tmp_path):
    runs = tmp_path / "runs"
    result = t2i(coco_dir, runs)
    methods = result.metrics["methods"]
    assert list(methods) == ["cfg", "ag"]  # the same names as on the toy; "none" = "cfg" while CFG is off
    captions = [r["caption"] for r in coco.read_split(coco_dir, "test")]
    extractor = TinyExtractor().eval()
    ref = np.load(features_path(coco.reference_dir(coco_dir, "test", 256), "tiny-test"))["features"]
    clip = tiny_clip()
    images = {}
    for name, m in methods.items():
        folder = Path(m["run_dir"])
        assert folder.parent == runs / "tiny-flux" / "t2i" and folder.name.startswith(f"{name}-")
        manifest = gen.load_manifest(folder)
        assert [s["prompt"] for s in manifest["samples"]] == captions  # caption i -> sample i
        paths = [folder / gen.SAMPLES_DIRNAME / s["file"] for s in manifest["samples"]]
        images[name] = np.stack([np.asarray(Image.open(p)) for p in paths])
        assert images[name].shape == (N_TEST, 16, 16, 3)
        # The reported numbers are those of these files: recomputed here from the files themselves.
        feats = image_features(paths, extractor, resolution=256, batch_size=8)
        assert m["fid"] == pytest.approx(fid_from_features(feats, ref), rel=1e-6)
        assert m["clip_sim"] == pytest.approx(clip.scores(list(images[name]), captions).mean(), rel=1e-5)
        assert m["n"] == N_TEST and 0 <= m["clip_sim"] <= 100
        assert json.loads((folder / f"scores-test-256-n{N_TEST}.json").read_text())["clip_sim"]["details"]["per_sample"]
    assert not np.array_equal(images["cfg"], images["ag"])
    # Cost: "cfg" is flux-dev-like (own CFG off): one forward per step. "ag"'s weak branch skips
    # single:0 of 4 blocks and shares the two double blocks before it, so it adds single:1 only.
    assert methods["cfg"]["nfe_per_step"] == 1.0 and methods["cfg"]["cfg_scale"] == 1.0
    assert methods["ag"]["nfe_per_step"] == pytest.approx(1.25) and methods["ag"]["spec"]["name"] == "autoguidance"
    p = result.metrics["protocol"]
    assert (p["split"], p["n"], p["n_reference"], p["resolution"]) == ("test", N_TEST, N_TEST, 256)
    assert p["clip"]["model"] == "ViT-B-32" and p["clip"]["pretrained"] == "none (random weights)"
    assert p["fid"]["extractor"] == "tiny-test" and p["libraries"]["clean-fid"] == "0.1.35"
    json.dumps(result.metrics)  # JSON-able
    table = result.table()
    assert "\\toprule" in table and "CLIP-SIM" in table and "ag" in table and f"{N_TEST} captions" in table
    assert table.count("\\textbf") == 2  # best FID and best CLIP-SIM

    # Resumed: nothing is rendered again (the resumed cost is counted on a fresh one-sample render).
    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*.png")}
    again = t2i(coco_dir, runs)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.png")} == mtimes
    for name, m in methods.items():
        resumed = again.metrics["methods"][name]
        assert resumed["run_dir"] == m["run_dir"]
        assert (resumed["fid"], resumed["clip_sim"], resumed["nfe_per_step"]) == pytest.approx(
            (m["fid"], m["clip_sim"], m["nfe_per_step"])
        )

    limited = t2i(coco_dir, runs, specs=[], limit=3)  # the same folders, their first 3 samples
    assert list(limited.metrics["methods"]) == ["cfg"] and limited.metrics["protocol"]["n"] == 3
    assert limited.metrics["methods"]["cfg"]["run_dir"] == methods["cfg"]["run_dir"]


def test_t2i_bad_inputs_fail_before_sampling(coco_dir, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(
        ConfigError,
        match=r"method 'nope' is not allowed; allowed: none, cfg, cfg@<scale>, a guidance spec of profile 'tiny-flux' \(ag\)",
    ):
        t2i(coco_dir, runs, specs=["ag", "nope"])
    with pytest.raises(ConfigError, match=r"method 'baseline' is now called 'cfg'"):
        t2i(coco_dir, runs, methods=["baseline", "ag"])
    with pytest.raises(
        coco.MissingDataError, match=r"python -m ditguide.coco annotations .*python -m ditguide.coco sample"
    ):
        t2i(tmp_path / "no-coco", runs)
    with pytest.raises(
        coco.MissingDataError,
        match=r"reference .*test-512 is missing.*python -m ditguide.coco reference .*--resolution 512",
    ):
        t2i(coco_dir, runs, resolution=512)  # the split exists, its 512 reference does not
    with pytest.raises(ConfigError, match="VBench needs a video profile"):
        evaluate_t2v("tiny-flux", params=PARAMS, runs_dir=runs)
    with pytest.raises(ConfigError, match="text-to-image needs an image profile"):
        evaluate_t2i_real("tiny-wan", params=PARAMS, runs_dir=runs)
    params = load_params(PARAMS)
    params["profiles"]["absent"] = {"family": "flux", "kind": "image", "model": "nobody/no-such-model-ditguide"}
    with pytest.raises(FileNotFoundError, match="hf download nobody/no-such-model-ditguide"):
        evaluate_t2i_real(
            "absent",
            split="test",
            resolution=256,
            params=params,
            data_dir=coco_dir,
            runs_dir=runs,
            device="cpu",
            fid_extractor=TinyExtractor(),
            fid_extractor_id="tiny-test",
            clip=tiny_clip(),
            num_workers=0,
        )
    assert not runs.exists()  # nothing was rendered


# ----------------------------------------------------------------------------------------------
# text to video


def vbench_python() -> Path:
    python = vb.default_vbench_python()
    if not python.is_file():
        pytest.fail(
            f"VBench environment missing (no {python}): run `bash scripts/setup_vbench_env.sh` first "
            "(or set DITGUIDE_VBENCH_PYTHON)"
        )
    return python


def flicker(path: Path) -> float:
    """VBench's temporal flickering of one video, from our own decode: (255 - mean |frame diff|) / 255."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    w, h = next(reader)["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3).astype(np.float64) for f in reader]
    return (255.0 - np.mean([np.abs(a - b).mean() for a, b in zip(frames, frames[1:])])) / 255.0


def test_suite_subset_and_summary():
    suite = [
        {"prompt_en": "a", "dimension": ["color", "scene"]},
        {"prompt_en": "b", "dimension": ["color"]},
        {"prompt_en": "c", "dimension": ["scene"]},
        {"prompt_en": "a", "dimension": ["human_action"]},
    ]
    assert suite_subset(suite, ["color", "scene"]) == [
        {"prompt_en": "a", "dimension": ["color", "scene"]},
        {"prompt_en": "b", "dimension": ["color"]},
        {"prompt_en": "c", "dimension": ["scene"]},
    ]
    assert suite_subset(suite, ["scene", "human_action"], limit=1) == [
        {"prompt_en": "a", "dimension": ["scene", "human_action"]}
    ]
    with pytest.raises(ValueError, match="no prompts for dimension 'dynamic_degree'"):
        suite_subset(suite, ["dynamic_degree"])
    raw = {d: 0.5 + 0.02 * i for i, d in enumerate(vb.DIMENSIONS)}
    full, ref = vbench_summary(raw), vb.vbench_scores(raw)
    assert (full["total"], full["quality"], full["semantic"]) == pytest.approx((ref.total, ref.quality, ref.semantic))
    part = vbench_summary({d: raw[d] for d in vb.QUALITY_DIMENSIONS})
    assert part["quality"] == pytest.approx(ref.quality) and part["semantic"] is None and part["total"] is None


def test_t2v_on_tiny_wan_through_vbench(tmp_path):
    python = vbench_python()
    standard = [
        e for e in json.loads(vb.standard_prompt_suite(python).read_text()) if e["dimension"] == ["temporal_flickering"]
    ]
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(standard[:2] + [{"prompt_en": "unused prompt", "dimension": ["color"]}]))
    prompts = [e["prompt_en"] for e in standard[:2]]
    runs = tmp_path / "runs"
    result = evaluate_t2v(
        "tiny-wan",
        prompts=suite,
        samples_per_prompt=2,
        dimensions=["temporal_flickering"],
        methods=["cfg", "stg"],  # not "none" too: one VBench run fewer
        params=PARAMS,
        runs_dir=runs,
        device="cpu",
        vbench_device="cpu",
        timeout=300,
    )
    methods = result.metrics["methods"]
    assert list(methods) == ["cfg", "stg"]
    for m in methods.values():
        videos = Path(m["run_dir"]) / gen.SAMPLES_DIRNAME
        assert sorted(p.name for p in videos.iterdir()) == sorted(f"{p}-{i}.mp4" for p in prompts for i in range(2))
        record = json.loads((Path(m["results_dir"]) / "temporal_flickering.json").read_text())
        assert record["n_videos"] == 4 == m["n_videos"]["temporal_flickering"] and record["mode"] == "vbench_standard"
        expected = np.mean([flicker(p) for p in videos.iterdir()])  # VBench's number, recomputed from the files
        assert m["raw"]["temporal_flickering"] == pytest.approx(100 * expected, abs=0.2)
        assert m["normalized"]["temporal_flickering"] == pytest.approx(
            (m["raw"]["temporal_flickering"] / 100 - 0.6293) / (1 - 0.6293)
        )
        assert m["total"] is None and m["quality"] is None and m["semantic"] is None  # 1 of 16 dimensions
    first = {
        name: (Path(m["run_dir"]) / gen.SAMPLES_DIRNAME / f"{prompts[0]}-0.mp4").read_bytes()
        for name, m in methods.items()
    }
    assert first["cfg"] != first["stg"]  # the spec changed the videos
    # tiny-wan's own CFG (5.0) costs 2 forwards; stg adds its perturbed branch, which skips block 0 of 2.
    assert methods["cfg"]["nfe_per_step"] == 2.0 and methods["stg"]["nfe_per_step"] == pytest.approx(2.5)
    p = result.metrics["protocol"]
    assert (p["n_prompts"], p["samples_per_prompt"], p["n_videos"], p["dimensions"]) == (
        2,
        2,
        4,
        ["temporal_flickering"],
    )
    assert p["generation"]["fps"] == 8 and p["generation"]["num_frames"] == 5 and p["vbench"].startswith("vbench 0.1")
    json.dumps(result.metrics)
    tables = result.tables()
    assert set(tables) == {"", "_dimensions"} and tables[""] == result.table()
    assert "temporal flickering" in tables[""] and "Total" not in tables[""] and "stg" in tables[""]
    assert "temporal flickering" in tables["_dimensions"]


def test_t2v_bad_inputs_fail_before_sampling(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(vb.VBenchEnvironmentError, match=r"scripts/setup_vbench_env.sh"):
        evaluate_t2v("tiny-wan", params=PARAMS, runs_dir=runs, vbench_python=tmp_path / "no-venv" / "bin" / "python")
    with pytest.raises(ConfigError, match=r"method 'nope' is not allowed; allowed: .*profile 'tiny-wan' \(stg\)"):
        evaluate_t2v("tiny-wan", specs=["nope"], params=PARAMS, runs_dir=runs)
    with pytest.raises(ValueError, match="unknown VBench dimensions"):
        evaluate_t2v("tiny-wan", dimensions=["flicker"], params=PARAMS, runs_dir=runs)
    with pytest.raises(ValueError, match="samples_per_prompt must be an integer in 1..5"):
        evaluate_t2v("tiny-wan", samples_per_prompt=6, params=PARAMS, runs_dir=runs)
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps(["a plain list of prompts"]))
    with pytest.raises(ValueError, match="VBench_full_info.json's format"):
        evaluate_t2v("tiny-wan", prompts=bad, params=PARAMS, runs_dir=runs, vbench_python=vbench_python())
    assert not runs.exists()
