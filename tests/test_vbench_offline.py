"""VBench's real Python API, in its own environment, on toy videos: temporal_flickering needs no weights.

The VBench environment is made by `bash scripts/setup_vbench_env.sh`; without it these tests fail
(they do not skip), saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ditguide import generate as gen
from ditguide.metrics import vbench_score as vb

LEVELS = (100, 140)  # grey levels of the flickering videos: |100 - 140| = 40 per frame pair


def vbench_env() -> tuple[Path, Path]:
    """(python, VBench's own VBench_full_info.json) of the VBench environment, or fail."""
    python = vb.default_vbench_python()
    if not python.is_file():
        pytest.fail(
            f"VBench environment missing (no {python}): run `bash scripts/setup_vbench_env.sh` first "
            "(or set DITGUIDE_VBENCH_PYTHON)"
        )
    try:
        return python, vb.standard_prompt_suite(python)
    except vb.VBenchEnvironmentError as e:
        pytest.fail(str(e))


class FlickerRenderer:
    """Even indices: a still grey video; odd indices: frames alternating between two grey levels."""

    kind, fps, base_seed = "video", 8, 0

    def describe(self):
        return {"model": "flicker", "levels": LEVELS}

    def render(self, prompts, indices):
        out = []
        for i in indices:
            levels = LEVELS if i % 2 else (120, 120)
            out.append(np.stack([np.full((32, 48, 3), levels[t % 2], np.uint8) for t in range(8)]))
        return out


class OneProcess:
    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self):
        pass


def decoded_flicker_score(path: Path) -> float:
    """VBench's temporal flickering of one video, computed here from our own decode (imageio-ffmpeg)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3).astype(np.float64) for f in reader]
    mae = np.mean([np.abs(a - b).mean() for a, b in zip(frames, frames[1:])])
    return (255.0 - mae) / 255.0


@pytest.fixture
def toy_videos(tmp_path):
    python, suite = vbench_env()
    entries = [e for e in json.loads(suite.read_text()) if e["dimension"] == ["temporal_flickering"]][:2]
    full_info = tmp_path / "full_info.json"
    full_info.write_text(json.dumps(entries))
    prompts = [e["prompt_en"] for e in entries]
    gen.generate(FlickerRenderer(), prompts, tmp_path / "gen", state=OneProcess(), progress=False)
    return python, full_info, prompts, tmp_path / "gen" / gen.SAMPLES_DIRNAME


def test_vbench_environment_is_set_up():
    python, suite = vbench_env()
    assert len(json.loads(suite.read_text())) == 946  # VBench's standard prompt suite
    prompts = gen.read_prompts(suite)
    assert len(prompts) == 944  # two prompts are listed under two dimensions each
    assert len(gen.plan_samples(prompts, "video")) == 4720  # every one a valid VBench file name


def test_temporal_flickering_through_vbench_api(toy_videos, tmp_path):
    python, full_info, prompts, videos = toy_videos
    results = tmp_path / "results"
    raw = vb.run_vbench(
        videos,
        results,
        dimensions=["temporal_flickering"],
        python=python,
        device="cpu",
        full_info=full_info,
        timeout=300,
    )
    record = json.loads((results / "temporal_flickering.json").read_text())
    assert record["n_videos"] == 10 and record["mode"] == "vbench_standard"
    # VBench found every file by its VBench name: {prompt}-{i}.mp4
    assert sorted(Path(v["video_path"]).name for v in record["video_results"]) == sorted(
        f"{p}-{i}.mp4" for p in prompts for i in range(5)
    )

    per_video = {Path(v["video_path"]).name: v["video_results"] for v in record["video_results"]}
    for name, score in per_video.items():
        assert score == pytest.approx(decoded_flicker_score(videos / name), abs=2e-3)
    manifest = gen.load_manifest(videos.parent)
    for s in manifest["samples"]:
        expected = 1.0 if s["index"] % 2 == 0 else (255 - abs(LEVELS[1] - LEVELS[0])) / 255
        assert per_video[s["file"]] == pytest.approx(expected, abs=0.01)
    assert raw["temporal_flickering"] == pytest.approx(np.mean(list(per_video.values())), abs=1e-9)
    assert raw["temporal_flickering"] == pytest.approx((5 * 1.0 + 5 * 215 / 255) / 10, abs=0.01)
    n = vb.normalized_scores(raw)["temporal_flickering"]
    assert n == pytest.approx((raw["temporal_flickering"] - 0.6293) / (1 - 0.6293))

    # A rerun reuses the finished dimension instead of evaluating it again.
    mtime = (results / "temporal_flickering.json").stat().st_mtime_ns
    assert (
        vb.run_vbench(
            videos,
            results,
            dimensions=["temporal_flickering"],
            python=python,
            device="cpu",
            full_info=full_info,
            timeout=300,
        )
        == raw
    )
    assert (results / "temporal_flickering.json").stat().st_mtime_ns == mtime


def test_missing_video_is_an_error_not_a_smaller_average(toy_videos, tmp_path):
    python, full_info, prompts, videos = toy_videos
    (videos / f"{prompts[1]}-3.mp4").unlink()
    with pytest.raises(vb.VBenchEnvironmentError, match="1 of the 10 videos the prompt suite expects are missing"):
        vb.run_vbench(
            videos,
            tmp_path / "results",
            dimensions=["temporal_flickering"],
            python=python,
            device="cpu",
            full_info=full_info,
            timeout=300,
        )
    assert not (tmp_path / "results" / "temporal_flickering.json").exists()


def test_dimensions_needing_detectron2_are_named_before_any_work(tmp_path):
    """Four dimensions import detectron2, which is not on PyPI: the error names them and the fix."""
    import os
    import subprocess

    python, _ = vbench_env()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    has_detectron2 = (
        subprocess.run(
            [str(python), "-c", "import importlib.util as u; print(u.find_spec('detectron2') is not None)"],
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
        == "True"
    )
    if has_detectron2:  # set up with WITH_DETECTRON2=1: then the GRiT dimensions must import
        proc = subprocess.run(
            [str(python), "-c", "import vbench.color, vbench.object_class"], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    proc = subprocess.run(
        [
            str(python),
            str(vb.VBENCH_RUN_SCRIPT),
            "--prefetch",
            "--dimensions",
            "temporal_flickering",
            "color",
            "object_class",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "color: ModuleNotFoundError" in proc.stderr and "object_class: ModuleNotFoundError" in proc.stderr
    assert "detectron2" in proc.stderr and "temporal_flickering:" not in proc.stderr
