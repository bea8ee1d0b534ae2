"""Generation on forked worker processes: the same files as one process, clear errors, resume after a
failed worker. The testbeds' own models are rendered both ways, since the claim that matters is that
their outputs depend neither on the batch nor on the thread count."""

from __future__ import annotations

import numpy as np
import pytest

from ditguide import generate as gen
from ditguide.generate_pool import WorkerError, check_workers, chunks, worker_batches
from ditguide.guidance import preset
from ditguide.profiles import load_params, load_pipeline, load_profile
from ditguide.render import PipelineRenderer
from test_generate import PROMPTS, FakeState, NoiseRenderer, folder_bytes


def run(renderer, prompts, out, **kw):
    return gen.generate(renderer, prompts, out, state=FakeState(0, 1), progress=False, **kw)


def test_chunks_are_whole_batches_contiguous_and_cover_everything():
    items = list(range(11))
    for parts in (1, 2, 3, 11, 15):
        got = chunks(items, parts)
        assert [x for c in got for x in c] == items
        assert len(got) == min(parts, len(items)) and all(c == list(range(c[0], c[-1] + 1)) for c in got)
        assert max(map(len, got)) - min(map(len, got)) <= 1
    # Batches of 4 (0-3, 4-7, 8-10) are never split: 2 workers get 2 and 1 of them.
    assert chunks(items, 2, 4) == [list(range(4)), list(range(4, 11))]
    assert chunks([], 2) == []
    assert worker_batches(96, 256, 2) == 48 and worker_batches(1000, 100, 2) == 100 and worker_batches(1, 8, 2) == 1


def test_workers_write_the_same_files_as_one_process(tmp_path):
    one = run(NoiseRenderer(), PROMPTS, tmp_path / "one", batch_size=2)
    two = run(NoiseRenderer(), PROMPTS, tmp_path / "two", batch_size=2, workers=3)
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")
    assert (two.rendered, two.skipped) == (one.rendered, one.skipped) == (7, 0)
    assert not list((tmp_path / "two" / gen.PARTIAL_DIRNAME).iterdir())


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2", None])
def test_bad_workers_is_refused_before_any_file(tmp_path, workers):
    with pytest.raises(ValueError, match=r"workers must be an integer >= 1"):
        run(NoiseRenderer(), PROMPTS, tmp_path / "out", workers=workers)
    assert not (tmp_path / "out").exists()


def test_a_failed_worker_stops_the_run_keeps_finished_files_and_resumes(tmp_path):
    dying = NoiseRenderer(fail_after=2)  # each forked worker has its own copy: both die after 2 samples
    with pytest.raises(WorkerError, match=r"generation worker generate-worker-\d failed .* rerun to resume"):
        run(dying, PROMPTS, tmp_path / "run", batch_size=1, workers=2)
    kept = folder_bytes(tmp_path / "run")
    assert 2 <= len(kept) < len(PROMPTS)
    resumed = run(NoiseRenderer(), PROMPTS, tmp_path / "run", batch_size=1, workers=2)
    assert resumed.skipped == len(kept) and resumed.rendered == len(PROMPTS) - len(kept)
    run(NoiseRenderer(), PROMPTS, tmp_path / "ref")
    assert folder_bytes(tmp_path / "run") == folder_bytes(tmp_path / "ref")


def test_check_workers_accepts_one_and_more():
    assert check_workers(1) == 1 and check_workers(2) == 2


@pytest.mark.parametrize(
    ("profile", "guidance", "count"),
    [
        ("scenes", None, 10),  # CFG at the profile default
        ("scenes", {"cfg_scale": 1.5, "blocks": ["single:3"]}, 10),  # SLG: a guidance spec with an edit
        ("clips", None, 8),
    ],
)
def test_testbed_renders_do_not_depend_on_workers_batch_or_threads(tmp_path, profile, guidance, count):
    params = load_params("params.yaml")
    prof = load_profile(profile, params)
    pipe = load_pipeline(prof)
    spec = None if guidance is None else preset("slg", **guidance)
    renderer = PipelineRenderer(prof, pipe, guidance=spec, steps=4)
    bench = {"scenes": "ditguide.testbeds.scenes", "clips": "ditguide.testbeds.clips"}[profile]
    captions = [s.caption() for s in __import__(bench, fromlist=["caption_set"]).caption_set("test", count)]
    run(renderer, captions, tmp_path / "one", batch_size=count, samples_per_prompt=1)
    # Two workers cut the one batch in two (a single-threaded process each): the same bytes.
    run(renderer, captions, tmp_path / "two", batch_size=count, samples_per_prompt=1, workers=2)
    one, two = folder_bytes(tmp_path / "one"), folder_bytes(tmp_path / "two")
    assert len(one) == count and one == two
    assert len({b for b in one.values()}) == count  # distinct samples: the comparison is not vacuous


def test_clip_chunks_on_workers_equal_one_process(tmp_path, capsys):
    """The T2V testbed's own chunk store (clip_store.render_chunks) on two workers: the same clips,
    a progress line per chunk, and a rerun reuses every chunk."""
    from ditguide.testbeds import clips
    from ditguide.testbeds.clip_store import render_chunks

    prof = load_profile("clips", load_params("params.yaml"))
    renderer = PipelineRenderer(prof, load_pipeline(prof), steps=3)
    prompts = [c.caption() for c in clips.caption_set("test", 9)]
    one = render_chunks(renderer, prompts, tmp_path / "one", 3, None)
    two = render_chunks(renderer, prompts, tmp_path / "two", 3, "cfg", workers=2)
    assert one.shape[0] == 9 and np.array_equal(one, two)
    assert capsys.readouterr().out.count("clips (") == 3
    files = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("chunk_*.npy")}
    assert len(files) == 3 and files == {p.name: p.read_bytes() for p in (tmp_path / "one").glob("chunk_*.npy")}
    again = render_chunks(renderer, prompts, tmp_path / "two", 3, "cfg", workers=2)
    assert np.array_equal(again, one) and capsys.readouterr().out == ""


def test_design_clip_scoring_splits_a_seed_set_across_workers(tmp_path):
    """The guidance design's clip scoring cuts a seed set (smaller than a batch) into one chunk per
    worker, and the clips equal one process rendering the set as one chunk."""
    from types import SimpleNamespace

    from ditguide.testbeds import clips
    from ditguide.testbeds.design_methods import Method
    from ditguide.testbeds.design_scoring import ClipsScoring

    prof = load_profile("clips", load_params("params.yaml"))
    renderer = PipelineRenderer(prof, load_pipeline(prof), steps=3)
    captions = [c.caption() for c in clips.caption_set("dev", 10)]
    m = Method("cfg@5", "cfg", "CFG 5", cfg_scale=5.0)

    def scorer(name, workers):
        return SimpleNamespace(
            runs_dir=str(tmp_path / name),
            profile="clips",
            split="dev",
            captions=captions,
            batch_size=256,
            workers=workers,
        )

    one = ClipsScoring().render(scorer("one", 1), m, renderer, 0)
    two = ClipsScoring().render(scorer("two", 2), m, renderer, 0)
    assert one.shape[0] == 10 and np.array_equal(one, two)
    chunks = sorted(p.name for p in (tmp_path / "two" / "clips" / "design" / "dev" / "cfg@5" / "set0").glob("chunk_*"))
    assert chunks == ["chunk_000000.npy", "chunk_000005.npy"]
