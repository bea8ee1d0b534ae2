"""MS-COCO 2017 for FID-30k and CLIP-SIM: download, seeded (image, caption) sample, reference images.

The protocol (data/README.md states it for readers of results):
- source: COCO 2017 *train* captions (val2017 has only 5,000 images, too few for FID-30k);
- a seeded permutation of the train2017 images that have captions; the first `n_test` images are
  the test split (reported), the next `n_dev` the dev split (tuning), so the two are disjoint and
  the test split does not change when the dev size does;
- one caption per image, drawn with a generator seeded by (seed, image_id), so an image's caption
  does not depend on which other images were drawn; whitespace is collapsed to single spaces;
- reference images: center crop to the short side, then Pillow's Lanczos resize to 512x512
  (default) or 256x256, saved as PNG; FID then runs clean-fid in 'clean' mode on these (its own
  bicubic resize to 299x299 for Inception), and generated images go through the same center-crop
  and Lanczos resize to the reference resolution first (`ditguide.metrics.fid`).

Layout under the data dir (default data/coco2017):
    annotations/captions_train2017.json      from the official annotations zip
    train2017/<file_name>.jpg                the official images (only the sampled ones are needed)
    splits/{test,dev}.json|.csv, meta.json   the sample: index, image_id, file_name, caption_id, caption
    reference/{split}-{res}/{index:05d}.png  reference images; features are cached beside them
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .cli import add_debug_flag, run_reporting_user_errors
from .io import DOWNLOAD_ERRORS, atomic_path, download_atomic, write_text_atomic
from .metrics.fid import center_crop_resize  # FID's resize protocol; the reference images are made with it

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
TRAIN_IMAGES_ZIP_URL = "http://images.cocodataset.org/zips/train2017.zip"
# Every COCO image is also served on its own; fetching only the sampled ones saves ~13 GB.
TRAIN_IMAGE_URL = "http://images.cocodataset.org/train2017/{file_name}"

DEFAULT_DATA_DIR = Path("data/coco2017")
CAPTIONS_MEMBER = "annotations/captions_train2017.json"  # path inside the annotations zip and under data dir
IMAGES_DIRNAME = "train2017"
SPLITS = ("test", "dev")
RESOLUTIONS = (512, 256)
DEFAULT_SEED = 0
DEFAULT_N_TEST = 30_000
DEFAULT_N_DEV = 5_000
RESIZE_DESCRIPTION = "center crop to the short side, then Pillow Image.resize(LANCZOS) to {res}x{res}"


class MissingDataError(FileNotFoundError):
    """Data the step needs is absent; the message says what to download and where to put it."""


# ----------------------------------------------------------------------------------------------
# downloading


def _download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    try:
        return download_atomic(url, dest, timeout)
    except DOWNLOAD_ERRORS as e:
        raise MissingDataError(
            f"could not download {url} to {dest} ({type(e).__name__}: {e}). If this machine is offline, "
            f"download it on one that is online and place it at {dest}."
        ) from e
    return dest


def _extract_members(zip_path: Path, members: Sequence[tuple[str, Path]]) -> None:
    """Extract (member, dest) pairs, each via a temporary file; the zip's index is read once."""
    with zipfile.ZipFile(zip_path) as zf:
        for member, dest in members:
            with atomic_path(dest, suffix=".part") as tmp, zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)


def download_annotations(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, url: str = ANNOTATIONS_URL) -> Path:
    """The train2017 captions file, downloading the official annotations zip (241 MB) if needed."""
    data_dir = Path(data_dir)
    captions = data_dir / CAPTIONS_MEMBER
    if captions.is_file():
        return captions
    zip_path = data_dir / "downloads" / Path(url).name
    if not zip_path.is_file():
        _download(url, zip_path)
    _extract_members(zip_path, [(CAPTIONS_MEMBER, captions)])
    return captions


def download_images(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    splits: Sequence[str] = SPLITS,
    mode: str = "sampled",
    workers: int = 16,
    image_url: str = TRAIN_IMAGE_URL,
    zip_url: str = TRAIN_IMAGES_ZIP_URL,
) -> int:
    """Fetch the images the splits use; returns how many were downloaded now.

    mode="sampled" fetches each needed image on its own (5.6 GB for 35k images); mode="zip"
    fetches the official train2017.zip (18 GB) and extracts the needed images.
    """
    if mode not in ("sampled", "zip"):
        raise ValueError(f"mode={mode!r} is not allowed; allowed: sampled, zip")
    data_dir = Path(data_dir)
    images_dir = data_dir / IMAGES_DIRNAME
    needed = sorted({r["file_name"] for split in splits for r in read_split(data_dir, split)})
    todo = [name for name in needed if not (images_dir / name).is_file()]
    if not todo:
        return 0
    images_dir.mkdir(parents=True, exist_ok=True)
    if mode == "zip":
        zip_path = data_dir / "downloads" / Path(zip_url).name
        if not zip_path.is_file():
            _download(zip_url, zip_path, timeout=600)
        _extract_members(zip_path, [(f"{IMAGES_DIRNAME}/{name}", images_dir / name) for name in todo])
        return len(todo)
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_download, image_url.format(file_name=name), images_dir / name) for name in todo]
        for future in tqdm(futures, desc="COCO images", unit="img"):
            future.result()
    return len(todo)


# ----------------------------------------------------------------------------------------------
# the sample


def _missing_annotations(path: Path) -> MissingDataError:
    return MissingDataError(
        f"COCO 2017 captions not found at {path}. Run `python -m ditguide.coco annotations --data-dir {path.parent.parent}` "
        f"(downloads {ANNOTATIONS_URL}), or download that zip elsewhere and extract {CAPTIONS_MEMBER} to {path}."
    )


def load_captions(captions_path: str | os.PathLike) -> tuple[dict[int, str], dict[int, list[tuple[int, str]]]]:
    """({image_id: file_name}, {image_id: [(caption_id, caption), ...] sorted by caption id})."""
    path = Path(captions_path)
    if not path.is_file():
        raise _missing_annotations(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    captions: dict[int, list[tuple[int, str]]] = {}
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in files:
            raise ValueError(f"{path}: caption {ann.get('id')} refers to unknown image {image_id}")
        captions.setdefault(image_id, []).append((int(ann["id"]), " ".join(str(ann["caption"]).split())))
    for caps in captions.values():
        caps.sort()
    return files, captions


def sample_pairs(
    captions_path: str | os.PathLike,
    *,
    n_test: int = DEFAULT_N_TEST,
    n_dev: int = DEFAULT_N_DEV,
    seed: int = DEFAULT_SEED,
) -> dict[str, list[dict]]:
    """{"test": [...], "dev": [...]}: disjoint images, one caption each (see the module docstring)."""
    for name, value in (("n_test", n_test), ("n_dev", n_dev), ("seed", seed)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if n_test == 0:
        raise ValueError("n_test must be >= 1")
    files, captions = load_captions(captions_path)
    ids = sorted(i for i in files if captions.get(i))
    if n_test + n_dev > len(ids):
        raise ValueError(
            f"n_test + n_dev = {n_test + n_dev} exceeds the {len(ids)} captioned images in {captions_path}"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = {"test": order[:n_test], "dev": order[n_test : n_test + n_dev]}
    out: dict[str, list[dict]] = {}
    for split, positions in chosen.items():
        records = []
        for k, pos in enumerate(positions):
            image_id = ids[int(pos)]
            caps = captions[image_id]
            c = int(np.random.default_rng([seed, image_id]).integers(len(caps)))
            records.append(
                {
                    "index": k,
                    "image_id": image_id,
                    "file_name": files[image_id],
                    "caption_id": caps[c][0],
                    "caption": caps[c][1],
                }
            )
        out[split] = records
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_splits(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    n_test: int = DEFAULT_N_TEST,
    n_dev: int = DEFAULT_N_DEV,
    seed: int = DEFAULT_SEED,
) -> dict[str, Path]:
    """Draw the sample from data_dir's captions and write splits/{test,dev}.json|.csv and meta.json."""
    data_dir = Path(data_dir)
    captions = data_dir / CAPTIONS_MEMBER
    pairs = sample_pairs(captions, n_test=n_test, n_dev=n_dev, seed=seed)
    splits_dir = data_dir / "splits"
    paths = {}
    for split, records in pairs.items():
        write_text_atomic(splits_dir / f"{split}.json", json.dumps(records, indent=0, ensure_ascii=False))
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=["index", "image_id", "file_name", "caption_id", "caption"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(records)
        write_text_atomic(splits_dir / f"{split}.csv", buf.getvalue())
        paths[split] = splits_dir / f"{split}.json"
    meta = {
        "source": "MS-COCO 2017 train captions",
        "annotations": CAPTIONS_MEMBER,
        "annotations_sha256": _sha256(captions),
        "seed": seed,
        "n_test": n_test,
        "n_dev": n_dev,
        "order": "seeded permutation of captioned train2017 image ids: test = first n_test, dev = next n_dev",
        "caption": "one per image, numpy default_rng([seed, image_id]) over captions sorted by id; whitespace collapsed",
    }
    write_text_atomic(splits_dir / "meta.json", json.dumps(meta, indent=1))
    return paths


def read_split(data_dir: str | os.PathLike, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    path = Path(data_dir) / "splits" / f"{split}.json"
    if not path.is_file():
        raise MissingDataError(
            f"COCO split file {path} not found: run `python -m ditguide.coco sample --data-dir {data_dir}` first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# reference images


def reference_dir(data_dir: str | os.PathLike, split: str, resolution: int) -> Path:
    return Path(data_dir) / "reference" / f"{split}-{resolution}"


def _prepare_one(src: Path, dest: Path, resolution: int) -> None:
    from PIL import Image

    with Image.open(src) as im:
        rgb = np.asarray(im.convert("RGB"))  # a few COCO images are greyscale
    out = Image.fromarray(center_crop_resize(rgb, resolution))
    with atomic_path(dest, suffix=".part") as tmp:
        out.save(tmp, format="PNG")


def prepare_reference(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    split: str = "test",
    resolution: int = 512,
    workers: int = 1,
) -> Path:
    """Write the split's reference images, `{index:05d}.png`, skipping finished ones; returns the folder."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r} is not allowed; allowed: {', '.join(map(str, RESOLUTIONS))}")
    data_dir = Path(data_dir)
    records = read_split(data_dir, split)
    images_dir = data_dir / IMAGES_DIRNAME
    missing = [r["file_name"] for r in records if not (images_dir / r["file_name"]).is_file()]
    if missing:
        raise MissingDataError(
            f"{len(missing)} of the {len(records)} {split} images are missing from {images_dir} "
            f"(e.g. {', '.join(missing[:3])}). Run `python -m ditguide.coco images --data-dir {data_dir}` "
            f"(fetches {TRAIN_IMAGE_URL.format(file_name='<file_name>')}), or extract them from {TRAIN_IMAGES_ZIP_URL} into {images_dir}."
        )
    out = reference_dir(data_dir, split, resolution)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.part"):
        stale.unlink(missing_ok=True)
    todo = [
        (images_dir / r["file_name"], out / f"{r['index']:05d}.png")
        for r in records
        if not (out / f"{r['index']:05d}.png").is_file()
    ]
    from tqdm.auto import tqdm

    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_prepare_one, src, dest, resolution) for src, dest in todo]
            for future in tqdm(futures, desc=f"reference {split}-{resolution}", unit="img"):
                future.result()
    else:
        for src, dest in tqdm(todo, desc=f"reference {split}-{resolution}", unit="img"):
            _prepare_one(src, dest, resolution)
    meta = {
        "split": split,
        "resolution": resolution,
        "n": len(records),
        "resize": RESIZE_DESCRIPTION.format(res=resolution),
        "source": f"MS-COCO 2017 train, split {split} of {data_dir / 'splits'}",
        "split_sha256": _sha256(data_dir / "splits" / f"{split}.json"),
    }
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=1))
    return out


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ditguide.coco", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
        return p

    add("annotations", "download and extract the train2017 captions")
    p = add("sample", "draw the seeded test/dev (image, caption) sample")
    p.add_argument("--n-test", type=int, default=DEFAULT_N_TEST)
    p.add_argument("--n-dev", type=int, default=DEFAULT_N_DEV)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p = add("images", "download the images the splits use")
    p.add_argument("--mode", choices=("sampled", "zip"), default="sampled")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--split", choices=SPLITS, action="append", help="default: all splits")
    p = add("reference", "write center-cropped, Lanczos-resized reference PNGs")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=512)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p = add("features", "compute and cache the reference images' clean-fid Inception features")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=512)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=8)
    for subparser in sub.choices.values():
        add_debug_flag(subparser)
    args = parser.parse_args(argv)
    return run_reporting_user_errors(lambda: _run_command(args), debug=args.debug, prog="python -m ditguide.coco")


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "annotations":
        print(download_annotations(args.data_dir))
    elif args.command == "sample":
        for split, path in write_splits(args.data_dir, n_test=args.n_test, n_dev=args.n_dev, seed=args.seed).items():
            print(f"{split}: {path}")
    elif args.command == "images":
        n = download_images(args.data_dir, splits=args.split or SPLITS, mode=args.mode, workers=args.workers)
        print(f"downloaded {n} images")
    elif args.command == "reference":
        print(prepare_reference(args.data_dir, split=args.split, resolution=args.resolution, workers=args.workers))
    elif args.command == "features":
        from .metrics.fid import cache_reference_features

        path = cache_reference_features(
            reference_dir(args.data_dir, args.split, args.resolution),
            resolution=args.resolution,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
