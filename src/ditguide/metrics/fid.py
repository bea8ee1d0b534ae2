"""FID (and KID) with clean-fid, against reference features cached once beside the reference images.

Protocol: each generated image is center-cropped and Lanczos-resized to the reference resolution
(`center_crop_resize`, the function that made the reference images with `ditguide.coco`), then goes
through clean-fid's own loader in 'clean' mode (Pillow bicubic to 299x299, float, no
quantization) into its Inception-V3 (the TF-ported 2015-12-05 torchscript weights). The Fréchet
distance is clean-fid's `frechet_distance`. clean-fid has no COCO statistics, and its
`make_custom_stats` writes into site-packages, so reference features are cached here, in
`<reference dir>/features-<extractor id>.npz`.

KID: clean-fid's `compute_kid` takes no custom feature extractor and draws subsets with NumPy's
global RNG; `kid_from_features` computes the same unbiased polynomial-kernel MMD (Bińkowski et
al. 2018) from features, with its own seeded generator.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..io import DOWNLOAD_ERRORS, atomic_path, download_atomic
from ..versions import package_version
from . import MetricResult, Samples

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ID = "inception-2015-12-05-clean"
# clean-fid itself looks for the weights in /tmp; DITGUIDE_INCEPTION_DIR moves them somewhere lasting.
DEFAULT_WEIGHTS_DIR = os.environ.get("DITGUIDE_INCEPTION_DIR", "/tmp")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# A feature extractor takes a float tensor (B, 3, 299, 299) with values in [0, 255] and returns (B, D).
FeatureExtractor = Callable


class MissingWeightsError(FileNotFoundError):
    """Weights are not on disk and could not be fetched; the message says what to download and where."""


def inception_extractor(
    device: str = "cuda", weights_dir: str | os.PathLike | None = None, *, url: str = INCEPTION_URL
):
    """clean-fid's Inception-V3 feature extractor (2048-d pool features), fetching its weights once.

    The download goes through a temporary file (clean-fid's own downloader writes the final name
    directly, so an interrupted download leaves a broken file it would then try to load).
    """
    weights_dir = Path(weights_dir or DEFAULT_WEIGHTS_DIR)
    path = weights_dir / INCEPTION_FILE
    if not path.is_file():
        try:
            download_atomic(url, path, timeout=60)
        except DOWNLOAD_ERRORS as e:
            raise MissingWeightsError(
                f"clean-fid Inception weights not found at {path} and not downloadable ({type(e).__name__}: {e}). "
                f"Download {INCEPTION_URL} on a machine with internet and place it at {path} "
                "(or set DITGUIDE_INCEPTION_DIR to the folder holding it)."
            ) from e
    from cleanfid.inception_torchscript import InceptionV3W

    try:
        model = InceptionV3W(str(weights_dir), download=False)
    except RuntimeError as e:
        raise MissingWeightsError(
            f"{path} is not a loadable torchscript file ({e}); delete it and download {INCEPTION_URL} again"
        ) from e
    return model.to(device).eval()


def image_features(
    paths: Sequence[str | os.PathLike],
    extractor: FeatureExtractor,
    *,
    resolution: int | None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    description: str = "",
    verbose: bool = False,
) -> np.ndarray:
    """(N, D) features of image files through clean-fid's 'clean' loader, in the order of `paths`.

    `resolution`: center-crop and Lanczos-resize each image to this size first (the reference's
    resolution); None feeds the files as they are.
    """
    import torch
    from cleanfid.fid import get_files_features

    if not paths:
        raise ValueError("no image paths given")
    transform = None if resolution is None else functools.partial(_crop_resize, size=int(resolution))
    return get_files_features(
        [str(p) for p in paths],
        model=extractor,
        num_workers=num_workers,
        batch_size=batch_size,
        device=torch.device(device),
        mode="clean",
        custom_image_tranform=transform,
        description=description,
        verbose=verbose,
    ).astype(np.float64)


def _crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    # A top-level function (not a lambda) so DataLoader workers can pickle it.
    return center_crop_resize(image, size)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature sets: clean-fid's Fréchet distance of their Gaussians."""
    from cleanfid.fid import frechet_distance

    f1, f2 = (np.asarray(f, dtype=np.float64) for f in (features1, features2))
    for name, f in (("features1", f1), ("features2", f2)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N >= 2, D), got {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    return float(frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)))


def kid_from_features(
    features1: np.ndarray, features2: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """Kernel Inception Distance: unbiased MMD² with the kernel k(x, y) = (x·y / D + 1)³, averaged
    over `num_subsets` random subsets of size min(N1, N2, max_subset_size)."""
    f1, f2 = (np.asarray(f, dtype=np.float64) for f in (features1, features2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {f1.shape} and {f2.shape}")
    d = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        # Unbiased: the diagonal (a sample with itself) is left out of the within-set means.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / num_subsets)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8: center crop to the short side, then Pillow Lanczos.

    The same function prepares the reference images and, inside FID, the generated ones.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s]
    if s == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.LANCZOS))


# ----------------------------------------------------------------------------------------------
# reference features


def reference_images(reference_dir: Path) -> list[Path]:
    return sorted(
        p for p in reference_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _reference_resolution(reference_dir: Path, resolution: int | None) -> int:
    meta = reference_dir / "meta.json"
    if meta.is_file():
        recorded = int(json.loads(meta.read_text())["resolution"])
        if resolution is not None and resolution != recorded:
            raise ValueError(
                f"resolution={resolution} but the reference images in {reference_dir} are {recorded}x{recorded}"
            )
        return recorded
    if resolution is None:
        raise ValueError(
            f"{reference_dir} has no meta.json, so the size of its images is unknown: prepare it with "
            "`python -m ditguide.coco reference --resolution N` (data/README.md)"
        )
    return int(resolution)


def features_path(reference_dir: str | os.PathLike, extractor_id: str = INCEPTION_ID) -> Path:
    if not extractor_id or "/" in extractor_id:
        raise ValueError(f"extractor_id must be a non-empty name without '/', got {extractor_id!r}")
    return Path(reference_dir) / f"features-{extractor_id}.npz"


def cache_reference_features(
    reference_dir: str | os.PathLike,
    *,
    extractor: FeatureExtractor | None = None,
    extractor_id: str = INCEPTION_ID,
    resolution: int | None = None,
    device: str = "cuda",
    batch_size: int = 64,
    num_workers: int = 0,
) -> Path:
    """Compute the reference images' features once and cache them; returns the cache file.

    A cache that exists and matches the folder's image list is reused; one computed from a
    different image list is an error (delete it to recompute).
    """
    reference_dir = Path(reference_dir)
    if extractor is not None and extractor_id == INCEPTION_ID:
        raise ValueError("a custom extractor needs its own extractor_id (the cache file is named by it)")
    out = features_path(reference_dir, extractor_id)
    if not reference_dir.is_dir():
        raise FileNotFoundError(
            f"reference folder {reference_dir} not found: prepare it with "
            "`python -m ditguide.coco reference --split test --resolution 512` (see data/README.md)"
        )
    images = reference_images(reference_dir)
    if out.is_file():
        _check_cache(out, images)
        return out
    if len(images) < 2:
        raise FileNotFoundError(
            f"{reference_dir} has {len(images)} reference images; FID needs the prepared set (see data/README.md)"
        )
    resolution = _reference_resolution(reference_dir, resolution)
    if extractor is None:
        extractor = inception_extractor(device)
    features = image_features(
        images,
        extractor,
        resolution=resolution,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        description=f"reference {reference_dir.name}",
        verbose=True,
    )
    with atomic_path(out, suffix=".npz") as tmp:  # np.savez adds .npz to any other name
        np.savez(
            tmp,
            features=features.astype(np.float32),
            files=np.array([p.name for p in images]),
            extractor_id=np.array(extractor_id),
            resolution=np.array(resolution),
        )
    return out


def _check_cache(cache: Path, images: list[Path]) -> None:
    if not images:  # features shipped without the images: nothing to compare against
        return
    with np.load(cache) as z:
        cached = list(z["files"])
    if cached != [p.name for p in images]:
        raise ValueError(
            f"{cache} was computed from {len(cached)} reference images, but {cache.parent} now holds "
            f"{len(images)} different ones; delete {cache} to recompute"
        )


def load_reference_features(
    reference_dir: str | os.PathLike, extractor_id: str = INCEPTION_ID
) -> tuple[np.ndarray, int]:
    """(features (N, D) float64, resolution) from the cache written by `cache_reference_features`."""
    path = features_path(reference_dir, extractor_id)
    if not path.is_file():
        raise FileNotFoundError(
            f"no cached reference features at {path}: run `python -m ditguide.coco features` "
            "(or cache_reference_features) first"
        )
    with np.load(path) as z:
        return z["features"].astype(np.float64), int(z["resolution"])


# ----------------------------------------------------------------------------------------------
# the metric


class FID:
    """FID of image samples against a prepared reference folder (optionally KID too).

    `extractor`/`extractor_id`: None uses clean-fid's Inception (real protocol); tests pass a
    small network and a name for its cache file. Reference features are computed on first use
    if not yet cached. `num_workers`: loader processes (default min(8, CPU count)).
    """

    name = "fid"
    higher_is_better = False

    def __init__(
        self,
        reference: str | os.PathLike,
        *,
        extractor: FeatureExtractor | None = None,
        extractor_id: str = INCEPTION_ID,
        resolution: int | None = None,
        kid: bool = False,
        device: str = "cuda",
        batch_size: int = 64,
        num_workers: int | None = None,
        weights_dir: str | os.PathLike | None = None,
    ):
        if extractor is not None and extractor_id == INCEPTION_ID:
            raise ValueError("a custom extractor needs its own extractor_id (the cache file is named by it)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.reference = Path(reference)
        features_path(self.reference, extractor_id)  # validates the id early
        self.extractor, self.extractor_id = extractor, extractor_id
        self.resolution, self.kid = resolution, kid
        # Loader processes for clean-fid's per-channel float resize (~15 ms an image on one core).
        num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.device, self.batch_size, self.num_workers, self.weights_dir = device, batch_size, num_workers, weights_dir

    def _extractor(self):
        if self.extractor is None:
            self.extractor = inception_extractor(self.device, self.weights_dir)
        return self.extractor

    def __call__(self, samples: Samples) -> MetricResult:
        if samples.kind != "image" or samples.paths is None:
            raise ValueError("FID judges image files: pass Samples.from_dir(<generation folder>)")
        if len(samples) < 2:
            raise ValueError("FID needs at least 2 samples")
        if not features_path(self.reference, self.extractor_id).is_file():
            cache_reference_features(
                self.reference,
                extractor=self._extractor(),
                extractor_id=self.extractor_id,
                resolution=self.resolution,
                device=self.device,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
            )
        else:
            _check_cache(features_path(self.reference, self.extractor_id), reference_images(self.reference))
        ref, resolution = load_reference_features(self.reference, self.extractor_id)
        if self.resolution is not None and self.resolution != resolution:
            raise ValueError(f"resolution={self.resolution} but the cached reference features are at {resolution}")
        gen = image_features(
            samples.paths,
            self._extractor(),
            resolution=resolution,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            description="generated",
        )
        details = {
            "n_generated": len(gen),
            "n_reference": len(ref),
            "reference": str(self.reference),
            "resolution": resolution,
            "library": f"clean-fid {package_version('clean-fid')} (mode 'clean')",
            "extractor": self.extractor_id,
            "resize": f"center crop + Pillow Lanczos to {resolution}, then clean-fid bicubic to 299",
        }
        if self.kid:
            details["kid"] = kid_from_features(gen, ref)
        return MetricResult(self.name, fid_from_features(gen, ref), self.higher_is_better, len(gen), details)
