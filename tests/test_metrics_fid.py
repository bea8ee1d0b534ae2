"""FID/KID through clean-fid's real loader with a tiny random feature extractor (no Inception weights)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from ditguide import generate as gen
from ditguide.coco import center_crop_resize
from ditguide.metrics import Samples, evaluate
from ditguide.metrics import fid as fidmod


class TinyExtractor(torch.nn.Module):
    """Stand-in for Inception: (B, 3, 299, 299) in [0, 255] -> (B, 6)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.AvgPool2d(23)
        self.fc = torch.nn.Linear(3 * 13 * 13, 6)

    def forward(self, x):
        assert x.shape[1:] == (3, 299, 299)
        return self.fc(self.pool(x / 255.0).flatten(1))


class ImageRenderer:
    kind, fps, base_seed = "image", 0, 0

    def __init__(self, size, brightness=128):
        self.size, self.brightness = size, brightness

    def describe(self):
        return {"model": "blobs", "size": self.size, "brightness": self.brightness}

    def render(self, prompts, indices):
        out = []
        for i in indices:
            rng = np.random.default_rng(i)
            out.append(np.clip(self.brightness + rng.normal(0, 40, (self.size, self.size, 3)), 0, 255).astype(np.uint8))
        return out


class OneProcess:
    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self):
        pass


def image_folder(path: Path, n: int, seed: int, size: int = 64, shift: float = 0.0) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.normal(120 + shift, 30, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path / f"{i:05d}.png")
    return path


@pytest.fixture(scope="module")
def extractor():
    return TinyExtractor().eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return image_folder(root / "a", 16, seed=1), image_folder(root / "b", 18, seed=2, shift=25.0)


def numpy_fid(f1, f2):
    """FID written out directly with NumPy/SciPy, independent of clean-fid."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_equals_clean_fid_compute_fid_and_a_direct_computation(folders, extractor):
    from cleanfid import fid as cleanfid

    a, b = folders
    fa = fidmod.image_features(sorted(a.glob("*.png")), extractor, resolution=64)
    fb = fidmod.image_features(sorted(b.glob("*.png")), extractor, resolution=64)
    assert fa.shape == (16, 6) and fb.shape == (18, 6)
    ours = fidmod.fid_from_features(fa, fb)
    reference = cleanfid.compute_fid(
        str(a),
        str(b),
        mode="clean",
        custom_feat_extractor=extractor,
        device=torch.device("cpu"),
        num_workers=0,
        batch_size=5,
        verbose=False,
    )
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(numpy_fid(fa, fb), rel=1e-6)
    assert ours > 1e-3  # the two folders differ in brightness: a distance that could be wrong
    assert fidmod.fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-6)


def test_kid_matches_clean_fid_kernel_distance_on_full_sets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(0, 1, (40, 5)), rng.normal(0.5, 1, (40, 5))
    # With subsets as large as the sets, the random subsets are permutations: no sampling noise.
    ours = fidmod.kid_from_features(f1, f2, num_subsets=3, max_subset_size=40, seed=1)
    assert ours == pytest.approx(kernel_distance(f1, f2, num_subsets=3, max_subset_size=40), rel=1e-9)
    assert ours > 0
    assert fidmod.kid_from_features(f1, f2, num_subsets=5, max_subset_size=10, seed=2) == fidmod.kid_from_features(
        f1, f2, num_subsets=5, max_subset_size=10, seed=2
    )  # seeded


def test_fid_metric_on_a_generation_folder_with_cached_reference(tmp_path, folders, extractor, monkeypatch):
    ref = image_folder(tmp_path / "ref", 14, seed=3)
    (ref / "meta.json").write_text(json.dumps({"resolution": 64}))
    # Generated at 96x96: FID resizes them to the reference's 64 with the reference's own resizer.
    gen.generate(ImageRenderer(96), [f"p{i}" for i in range(12)], tmp_path / "run", state=OneProcess(), progress=False)
    samples = Samples.from_dir(tmp_path / "run")
    metric = fidmod.FID(
        ref, extractor=extractor, extractor_id="tiny", device="cpu", kid=True, batch_size=4, num_workers=0
    )
    result = evaluate(samples, [metric])["fid"]
    assert result.n == 12 and result.details["n_reference"] == 14 and result.details["resolution"] == 64
    assert not result.higher_is_better and "clean-fid" in result.details["library"]

    from cleanfid import fid as cleanfid

    expected = cleanfid.compute_fid(
        str(tmp_path / "run" / gen.SAMPLES_DIRNAME),
        str(ref),
        mode="clean",
        custom_feat_extractor=extractor,
        device=torch.device("cpu"),
        num_workers=0,
        custom_image_tranform=functools.partial(center_crop_resize, size=64),
        verbose=False,
    )
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert result.details["kid"] == pytest.approx(
        fidmod.kid_from_features(
            fidmod.image_features(samples.paths, extractor, resolution=64),
            fidmod.load_reference_features(ref, "tiny")[0],
        ),
        rel=1e-9,
    )

    cache = fidmod.features_path(ref, "tiny")
    assert cache.is_file()
    seen = []
    real = fidmod.image_features
    monkeypatch.setattr(
        fidmod, "image_features", lambda paths, *a, **k: seen.append(len(paths)) or real(paths, *a, **k)
    )
    assert metric(samples).value == pytest.approx(result.value, rel=1e-9)
    assert seen == [12]  # only the generated images: the reference came from the cache

    image_folder(tmp_path / "extra", 1, seed=9)
    (tmp_path / "extra" / "00000.png").rename(ref / "99999.png")
    with pytest.raises(ValueError, match="computed from 14 reference images.*delete"):
        metric(samples)


def test_missing_data_and_weights_say_what_to_fetch(tmp_path, extractor):
    with pytest.raises(FileNotFoundError, match="python -m ditguide.coco reference"):
        fidmod.cache_reference_features(tmp_path / "nope", extractor=extractor, extractor_id="tiny")
    with pytest.raises(FileNotFoundError, match="python -m ditguide.coco features"):
        fidmod.load_reference_features(tmp_path)
    with pytest.raises(fidmod.MissingWeightsError) as err:
        fidmod.inception_extractor("cpu", tmp_path / "w", url="file:///nowhere/inception-2015-12-05.pt")
    message = str(err.value)
    assert fidmod.INCEPTION_URL in message and str(tmp_path / "w" / fidmod.INCEPTION_FILE) in message
    assert not list((tmp_path / "w").iterdir())  # no partial download left behind
    with pytest.raises(ValueError, match="custom extractor needs its own extractor_id"):
        fidmod.FID(tmp_path, extractor=extractor)
    with pytest.raises(ValueError, match="FID judges image files"):
        fidmod.FID(tmp_path, extractor=extractor, extractor_id="tiny")(
            Samples.from_arrays([np.zeros((4, 4, 3), np.uint8)] * 2, ["a", "b"])
        )
