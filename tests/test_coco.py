"""COCO 2017 protocol on a fake COCO-format annotation file and a few generated JPEGs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditguide import coco
from ditguide.generate import read_prompts

N_IMAGES = 14


def write_fake_coco(data_dir: Path, n_images: int = N_IMAGES) -> Path:
    """captions_train2017.json in the official layout + JPEGs of assorted sizes (one greyscale)."""
    rng = np.random.default_rng(123)
    images, annotations = [], []
    caption_id = 1000
    for k in range(n_images):
        image_id = 500 + 7 * k  # ids are not 0..n-1 in COCO either
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 40 + k, "height": 30 + 2 * k})
        for c in range(2 + k % 4):
            annotations.append(
                {"id": caption_id, "image_id": image_id, "caption": f"  Image {image_id}\ncaption  {c}. "}
            )
            caption_id += 1
        h, w = 30 + 2 * k, 40 + k
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert("L") if k == 3 else Image.fromarray(pixels)
        (data_dir / coco.IMAGES_DIRNAME).mkdir(parents=True, exist_ok=True)
        img.save(data_dir / coco.IMAGES_DIRNAME / name, quality=90)
    images.append({"id": 99999, "file_name": "000000099999.jpg", "width": 10, "height": 10})  # no captions: never drawn
    path = data_dir / coco.CAPTIONS_MEMBER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_sample_is_seeded_disjoint_and_one_caption_per_image(tmp_path):
    captions = write_fake_coco(tmp_path)
    pairs = coco.sample_pairs(captions, n_test=8, n_dev=4, seed=3)
    test, dev = pairs["test"], pairs["dev"]
    assert len(test) == 8 and len(dev) == 4
    assert [r["index"] for r in test] == list(range(8))
    test_ids, dev_ids = {r["image_id"] for r in test}, {r["image_id"] for r in dev}
    assert len(test_ids) == 8 and len(dev_ids) == 4 and not test_ids & dev_ids
    assert 99999 not in test_ids | dev_ids
    raw = json.loads(captions.read_text())
    by_id = {a["id"]: a for a in raw["annotations"]}
    for r in test + dev:
        ann = by_id[r["caption_id"]]
        assert ann["image_id"] == r["image_id"]
        assert r["caption"] == " ".join(ann["caption"].split())  # whitespace collapsed, text kept
        assert r["file_name"] == f"{r['image_id']:012d}.jpg"
    assert coco.sample_pairs(captions, n_test=8, n_dev=4, seed=3) == pairs
    assert coco.sample_pairs(captions, n_test=8, n_dev=4, seed=4) != pairs
    # The test split does not move when only the dev size changes.
    assert coco.sample_pairs(captions, n_test=8, n_dev=1, seed=3)["test"] == test
    # Captions are chosen per image: the same image gets the same caption in a different split size.
    again = {r["image_id"]: r["caption_id"] for r in coco.sample_pairs(captions, n_test=12, n_dev=0, seed=3)["test"]}
    assert all(again[r["image_id"]] == r["caption_id"] for r in test + dev)


def test_sample_errors_are_clear(tmp_path):
    captions = write_fake_coco(tmp_path)
    with pytest.raises(ValueError, match=f"exceeds the {N_IMAGES} captioned images"):
        coco.sample_pairs(captions, n_test=10, n_dev=10)
    with pytest.raises(ValueError, match="n_dev must be an integer >= 0"):
        coco.sample_pairs(captions, n_test=2, n_dev=-1)
    with pytest.raises(coco.MissingDataError, match=r"annotations_trainval2017\.zip") as err:
        coco.sample_pairs(tmp_path / "nowhere" / coco.CAPTIONS_MEMBER)
    assert "captions_train2017.json" in str(err.value)


def test_write_splits_json_csv_and_prompts(tmp_path):
    write_fake_coco(tmp_path)
    paths = coco.write_splits(tmp_path, n_test=6, n_dev=3, seed=0)
    test = coco.read_split(tmp_path, "test")
    assert paths["test"] == tmp_path / "splits" / "test.json" and len(test) == 6
    assert read_prompts(tmp_path / "splits" / "test.csv") == [r["caption"] for r in test]
    assert read_prompts(tmp_path / "splits" / "test.json") == [r["caption"] for r in test]
    meta = json.loads((tmp_path / "splits" / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["n_test"] == 6 and len(meta["annotations_sha256"]) == 64
    with pytest.raises(ValueError, match="split='val' is not allowed; allowed: test, dev"):
        coco.read_split(tmp_path, "val")


def test_center_crop_resize_keeps_the_center():
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # left and right bands lie outside the central 60x60 square
    image[:, 80:] = (255, 0, 0)
    image[:, 20:80] = (0, 200, 0)
    out = coco.center_crop_resize(image, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (0, 200, 0)).max() <= 2
    tall = np.arange(80 * 40 * 3, dtype=np.uint32).reshape(80, 40, 3).astype(np.uint8)
    np.testing.assert_array_equal(coco.center_crop_resize(tall, 40), tall[20:60])  # already at size: crop only


def test_prepare_reference_writes_pngs_once_and_reports_missing_images(tmp_path):
    write_fake_coco(tmp_path)
    coco.write_splits(tmp_path, n_test=5, n_dev=2, seed=0)
    out = coco.prepare_reference(tmp_path, split="test", resolution=256)
    assert out == coco.reference_dir(tmp_path, "test", 256)
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(5)]
    test = coco.read_split(tmp_path, "test")
    for p, r in zip(pngs, test):
        with Image.open(p) as im:
            assert im.size == (256, 256) and im.mode == "RGB"
            src = np.asarray(Image.open(tmp_path / coco.IMAGES_DIRNAME / r["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(np.asarray(im), coco.center_crop_resize(src, 256))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resolution"] == 256 and meta["n"] == 5 and "Lanczos" in meta["resize"].replace("LANCZOS", "Lanczos")
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    coco.prepare_reference(tmp_path, split="test", resolution=256)
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes  # finished files are not rewritten

    (tmp_path / coco.IMAGES_DIRNAME / test[0]["file_name"]).unlink()
    with pytest.raises(coco.MissingDataError, match=r"1 of the 5 test images are missing") as err:
        coco.prepare_reference(tmp_path, split="test", resolution=512)
    assert "python -m ditguide.coco images" in str(err.value) and "train2017.zip" in str(err.value)
    with pytest.raises(ValueError, match="resolution=300 is not allowed; allowed: 512, 256"):
        coco.prepare_reference(tmp_path, resolution=300)


def test_downloads_go_through_temporary_files(tmp_path):
    """The real download code, served from file:// URLs (no network)."""
    src = tmp_path / "server"
    write_fake_coco(src)
    zip_path = src / "annotations_trainval2017.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(src / coco.CAPTIONS_MEMBER, coco.CAPTIONS_MEMBER)
    data = tmp_path / "data"
    captions = coco.download_annotations(data, url=zip_path.as_uri())
    assert captions.read_bytes() == (src / coco.CAPTIONS_MEMBER).read_bytes()
    coco.write_splits(data, n_test=4, n_dev=2)
    n = coco.download_images(data, image_url=(src / coco.IMAGES_DIRNAME).as_uri() + "/{file_name}", workers=2)
    assert n == 6
    for r in coco.read_split(data, "test") + coco.read_split(data, "dev"):
        assert (data / coco.IMAGES_DIRNAME / r["file_name"]).read_bytes() == (
            src / coco.IMAGES_DIRNAME / r["file_name"]
        ).read_bytes()
    assert coco.download_images(data, image_url="file:///nowhere/{file_name}") == 0  # nothing left to fetch
    assert not list(data.rglob("*.part"))

    with pytest.raises(coco.MissingDataError, match="could not download file:///nowhere/x.zip") as err:
        coco.download_annotations(tmp_path / "other", url="file:///nowhere/x.zip")
    assert "place it at" in str(err.value)
    assert not [p for p in (tmp_path / "other").rglob("*") if p.is_file()]  # no partial download left


def test_cli_sample_and_reference(tmp_path, capsys):
    write_fake_coco(tmp_path)
    assert coco.main(["sample", "--data-dir", str(tmp_path), "--n-test", "3", "--n-dev", "2", "--seed", "5"]) == 0
    assert len(coco.read_split(tmp_path, "dev")) == 2
    assert coco.main(["reference", "--data-dir", str(tmp_path), "--resolution", "256", "--workers", "1"]) == 0
    assert len(list(coco.reference_dir(tmp_path, "test", 256).glob("*.png"))) == 3
    assert "reference/test-256" in capsys.readouterr().out
