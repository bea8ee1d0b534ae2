"""Generation: naming, seeds, sharding, atomic writes, resume after a kill, manifest checks, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ditguide import generate as gen
from ditguide.seeding import sample_noise, sample_seed

REPO = Path(__file__).resolve().parents[1]


class NoiseRenderer:
    """Outputs are a fixed function of each sample's seeded noise (as a real renderer's are)."""

    def __init__(self, kind="image", size=16, frames=4, base_seed=0, label="a", fail_after=None, delay=0.0):
        self.kind, self.fps, self.base_seed = kind, 8, base_seed
        self.size, self.frames, self.label = size, frames, label
        self.fail_after, self.delay = fail_after, delay
        self.seen: list[int] = []

    def describe(self):
        return {"model": "noise", "label": self.label, "size": self.size}

    def render(self, prompts, indices):
        if self.fail_after is not None and len(self.seen) + len(indices) > self.fail_after:
            raise RuntimeError("renderer died")
        time.sleep(self.delay)
        self.seen += list(indices)
        shape = (self.size, self.size, 3) if self.kind == "image" else (self.frames, self.size, self.size, 3)
        noise = sample_noise(shape, indices, self.base_seed).numpy()
        # Videos: slowly varying frames (H.264 keeps them near-exact), images: raw noise.
        if self.kind == "video":
            noise = noise.mean(axis=(1, 2, 3), keepdims=True) + 0.1 * noise
        return [np.clip(128 + 60 * x, 0, 255).astype(np.uint8) for x in noise]


class FakeState:
    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.is_main_process = rank, world, rank == 0

    def wait_for_everyone(self):
        pass


PROMPTS = [f"a photo number {i}" for i in range(7)]


def folder_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out_dir / gen.SAMPLES_DIRNAME).iterdir())}


def test_images_named_by_index_and_independent_of_batch_size(tmp_path):
    a = gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "a", batch_size=1, state=FakeState(0, 1), progress=False)
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "b", batch_size=3, state=FakeState(0, 1), progress=False)
    files_a = folder_bytes(tmp_path / "a")
    assert list(files_a) == [f"{i:05d}.png" for i in range(7)]
    assert files_a == folder_bytes(tmp_path / "b")
    assert (a.rendered, a.skipped, a.planned) == (7, 0, 7)
    manifest = gen.load_manifest(tmp_path / "a")
    assert [s["seed"] for s in manifest["samples"]] == [sample_seed(i, 0) for i in range(7)]
    assert [s["prompt"] for s in manifest["samples"]] == PROMPTS
    assert manifest["versions"]["torch"] and manifest["renderer"]["model"] == "noise"
    assert not list((tmp_path / "a" / gen.PARTIAL_DIRNAME).iterdir())


@pytest.mark.parametrize("kind", ["image", "video"])
def test_failure_midway_then_resume_equals_uninterrupted_run(tmp_path, kind):
    prompts = PROMPTS[:4] if kind == "image" else PROMPTS[:2]  # videos: 5 per prompt -> 10 samples
    gen.generate(NoiseRenderer(kind), prompts, tmp_path / "ref", batch_size=2, state=FakeState(0, 1), progress=False)

    dying = NoiseRenderer(kind, fail_after=3)
    with pytest.raises(RuntimeError, match="renderer died"):
        gen.generate(dying, prompts, tmp_path / "run", batch_size=2, state=FakeState(0, 1), progress=False)
    partial = folder_bytes(tmp_path / "run")
    assert len(partial) == 2  # the first batch; the second died before writing anything
    assert not list((tmp_path / "run" / gen.PARTIAL_DIRNAME).iterdir())

    resumed = NoiseRenderer(kind)
    summary = gen.generate(resumed, prompts, tmp_path / "run", batch_size=2, state=FakeState(0, 1), progress=False)
    n = len(prompts) * (1 if kind == "image" else 5)
    assert summary.skipped == 2 and summary.rendered == n - 2
    assert sorted(resumed.seen) == list(range(2, n))
    assert folder_bytes(tmp_path / "run") == folder_bytes(tmp_path / "ref")
    assert len(gen.verify(tmp_path / "run")) == n


def test_killed_process_leaves_only_complete_files_and_resumes(tmp_path):
    """SIGKILL a real generation process mid-run; the rerun completes it to the uninterrupted result."""
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_generate import NoiseRenderer, FakeState, PROMPTS
        from ditguide.generate import generate
        generate(NoiseRenderer(delay=0.4), PROMPTS, {str(out)!r}, state=FakeState(0, 1), progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / gen.SAMPLES_DIRNAME).glob("*.png"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, "the generation process ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    done = list((out / gen.SAMPLES_DIRNAME).glob("*.png"))
    assert 2 <= len(done) < len(PROMPTS)
    with pytest.raises(gen.IncompleteOutputError) as err:
        gen.verify(out)
    assert not err.value.corrupt  # nothing half-written: only missing ones
    gen.generate(NoiseRenderer(), PROMPTS, out, state=FakeState(0, 1), progress=False)
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "ref", state=FakeState(0, 1), progress=False)
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")
    assert not list((out / gen.PARTIAL_DIRNAME).iterdir())


def test_shards_are_disjoint_and_together_equal_one_process(tmp_path):
    ranks = [NoiseRenderer(), NoiseRenderer()]
    for rank, renderer in enumerate(ranks):
        gen.generate(renderer, PROMPTS, tmp_path / "sharded", batch_size=2, state=FakeState(rank, 2), progress=False)
    assert ranks[0].seen == [0, 2, 4, 6] and ranks[1].seen == [1, 3, 5]
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "single", state=FakeState(0, 1), progress=False)
    assert folder_bytes(tmp_path / "sharded") == folder_bytes(tmp_path / "single")


def test_limit_renders_a_prefix_and_a_later_run_continues(tmp_path):
    r = NoiseRenderer()
    s = gen.generate(r, PROMPTS, tmp_path, limit=3, state=FakeState(0, 1), progress=False)
    assert s.planned == 3 and r.seen == [0, 1, 2]
    assert len(gen.verify(tmp_path, 3)) == 3
    with pytest.raises(gen.IncompleteOutputError):
        gen.verify(tmp_path)
    r2 = NoiseRenderer()
    gen.generate(r2, PROMPTS, tmp_path, state=FakeState(0, 1), progress=False)
    assert r2.seen == [3, 4, 5, 6]


def test_resume_with_a_different_run_is_an_error(tmp_path):
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path, limit=2, state=FakeState(0, 1), progress=False)
    with pytest.raises(gen.ManifestMismatchError, match=r"renderer\.label: existing 'a' / this run 'b'"):
        gen.generate(NoiseRenderer(label="b"), PROMPTS, tmp_path, state=FakeState(0, 1), progress=False)
    with pytest.raises(gen.ManifestMismatchError, match=r"samples\[3\]\.prompt"):
        gen.generate(
            NoiseRenderer(), PROMPTS[:3] + ["another"] + PROMPTS[4:], tmp_path, state=FakeState(0, 1), progress=False
        )
    with pytest.raises(gen.ManifestMismatchError, match="base_seed"):
        gen.generate(NoiseRenderer(base_seed=1), PROMPTS, tmp_path, state=FakeState(0, 1), progress=False)
    # A non-main process checks the recorded run too.
    with pytest.raises(gen.ManifestMismatchError):
        gen.generate(NoiseRenderer(label="b"), PROMPTS, tmp_path, state=FakeState(1, 2), progress=False)


def test_seed_disagreement_and_bad_outputs_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="base_seed=3 but the renderer draws noise with base_seed=0"):
        gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "a", base_seed=3, state=FakeState(0, 1), progress=False)
    assert not (tmp_path / "a").exists()

    class Float(NoiseRenderer):
        def render(self, prompts, indices):
            return [np.zeros((8, 8, 3), np.float32) for _ in indices]

    with pytest.raises(ValueError, match="expected a HxWx3 uint8 array"):
        gen.generate(Float(), PROMPTS, tmp_path / "b", state=FakeState(0, 1), progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "c", batch_size=0, state=FakeState(0, 1))
    with pytest.raises(ValueError, match="even"):
        gen.generate(
            NoiseRenderer("video", size=15), PROMPTS[:1], tmp_path / "d", state=FakeState(0, 1), progress=False
        )


def test_verify_reports_missing_and_corrupt_by_index(tmp_path):
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path, state=FakeState(0, 1), progress=False)
    samples = tmp_path / gen.SAMPLES_DIRNAME
    (samples / "00002.png").unlink()
    data = (samples / "00005.png").read_bytes()
    (samples / "00005.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(gen.IncompleteOutputError, match=r"1 missing \(indices 2\) and 1 corrupt \(indices 5") as err:
        gen.verify(tmp_path)
    assert err.value.missing == [2] and list(err.value.corrupt) == [5]
    assert len(gen.verify(tmp_path, 2)) == 2  # the prefix before the damage is fine
    with pytest.raises(gen.IncompleteOutputError):
        gen.verify(tmp_path, delete_corrupt=True)
    assert not (samples / "00005.png").exists()
    r = NoiseRenderer()
    gen.generate(r, PROMPTS, tmp_path, state=FakeState(0, 1), progress=False)
    assert r.seen == [2, 5]
    assert [p.name for p in gen.verify(tmp_path)] == [f"{i:05d}.png" for i in range(7)]


def test_video_names_follow_vbench(tmp_path):
    prompts = ["In a still frame, a stop sign", "a toilet, frozen in time"]
    gen.generate(NoiseRenderer("video"), prompts, tmp_path, state=FakeState(0, 1), progress=False)
    names = sorted(p.name for p in (tmp_path / gen.SAMPLES_DIRNAME).iterdir())
    assert names == sorted(f"{p}-{i}.mp4" for p in prompts for i in range(5))
    manifest = gen.load_manifest(tmp_path)
    assert manifest["fps"] == 8 and manifest["encoding"]["crf"] == gen.DEFAULT_VIDEO_CRF
    assert [s["index"] for s in manifest["samples"] if s["prompt"] == prompts[1]] == [5, 6, 7, 8, 9]
    pm = gen.prompt_map(tmp_path)
    assert pm[str(tmp_path / gen.SAMPLES_DIRNAME / f"{prompts[1]}-3.mp4")] == prompts[1]
    import imageio_ffmpeg

    frames = list(imageio_ffmpeg.read_frames(str(tmp_path / gen.SAMPLES_DIRNAME / f"{prompts[0]}-0.mp4")))[1:]
    assert len(frames) == 4


def test_plan_rejects_names_vbench_cannot_use():
    with pytest.raises(ValueError, match="cannot be a VBench file name"):
        gen.plan_samples(["a cat / a dog"], "video")
    with pytest.raises(ValueError, match="byte file name"):
        gen.plan_samples(["x" * 250], "video")
    with pytest.raises(ValueError, match="duplicate prompt"):
        gen.plan_samples(["a cat", "a dog", "a cat"], "video")
    plan = gen.plan_samples(["a cat / a dog"], "video", names=[f"custom-{i}" for i in range(5)])
    assert plan[4].file == "custom-4.mp4" and plan[4].prompt == "a cat / a dog"
    assert [s.file for s in gen.plan_samples(["a", "a"], "image")] == ["00000.png", "00001.png"]  # images: by index
    with pytest.raises(ValueError, match="kind='audio' is not allowed; allowed: image, video"):
        gen.plan_samples(["a"], "audio")


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert gen.read_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text('index,caption\n0,"a cat, sitting"\n1,a dog\n')
    assert gen.read_prompts(tmp_path / "p.csv") == ["a cat, sitting", "a dog"]
    (tmp_path / "p.json").write_text(json.dumps([{"caption": "x", "image_id": 1}, {"caption": "y", "image_id": 2}]))
    assert gen.read_prompts(tmp_path / "p.json") == ["x", "y"]
    vbench = [
        {"prompt_en": "a", "dimension": ["scene"]},
        {"prompt_en": "b", "dimension": ["color"]},
        {"prompt_en": "a", "dimension": ["color"]},
    ]
    (tmp_path / "full_info.json").write_text(json.dumps(vbench))
    assert gen.read_prompts(tmp_path / "full_info.json") == ["a", "b"]
    with pytest.raises(ValueError, match="suffix '.yaml' not supported"):
        (tmp_path / "p.yaml").write_text("x")
        gen.read_prompts(tmp_path / "p.yaml")


def test_cli_uses_load_renderer_and_verifies(tmp_path, monkeypatch, capsys):
    import ditguide.render as profiles

    calls = []

    def fake_load_renderer(profile, spec, params_path="params.yaml", base_seed=0, prompts=()):
        calls.append((profile, spec, params_path))
        return NoiseRenderer()

    monkeypatch.setattr(profiles, "load_renderer", fake_load_renderer, raising=False)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    argv = [
        "--profile",
        "toy",
        "--spec",
        "ag:w=1.5",
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "2",
        "--limit",
        "5",
        "--no-progress",
    ]
    assert gen.main(argv) == 0
    assert calls == [("toy", "ag:w=1.5", "params.yaml")]
    assert "5 samples complete and decodable" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / gen.SAMPLES_DIRNAME).iterdir())) == 5
    with pytest.raises(SystemExit):
        gen.main(argv[:-2] + ["-1", "--no-progress"])  # --limit -1


def test_distributed_launch_shards_over_two_processes(tmp_path):
    """A real two-process launch (torchrun, which `accelerate launch --multi_gpu` runs): the default
    PartialState forms the process group and each process renders its own indices."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_generate import NoiseRenderer, PROMPTS
        from ditguide.generate import generate
        r = NoiseRenderer()
        s = generate(r, PROMPTS, {str(tmp_path / "out")!r}, progress=False)
        open({str(tmp_path)!r} + f"/seen-{{r.seen[0] % 2}}.json", "w").write(json.dumps(r.seen))
        """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731", str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "seen-0.json").read_text()) == [0, 2, 4, 6]
    assert json.loads((tmp_path / "seen-1.json").read_text()) == [1, 3, 5]
    gen.generate(NoiseRenderer(), PROMPTS, tmp_path / "single", state=FakeState(0, 1), progress=False)
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "single")
