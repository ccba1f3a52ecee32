"""pipeline.data.masks and `shard.py masks`: buckets, the generator, mask files of every kind."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import ImageError
from pipeline.data.masks import (BUCKETS, bucket_name, bucket_of, decode_mask, encode_mask,
                                 generate_mask, hole_ratio, load_mask)
from tests.helpers.data_files import read_index, run_shard, write_masks


def test_bucket_boundaries():
    assert [bucket_name(i) for i in range(6)] == ["0-10", "10-20", "20-30", "30-40", "40-50",
                                                  "50-60"]
    assert bucket_of(0.0) is None and bucket_of(0.61) is None and bucket_of(1.0) is None
    assert bucket_of(1e-6) == 0 and bucket_of(0.1) == 0 and bucket_of(0.1001) == 1
    assert bucket_of(0.3) == 2 and bucket_of(0.6) == 5
    for i, (lo, hi) in enumerate(BUCKETS):
        assert bucket_of((lo + hi) / 2) == i


@pytest.mark.parametrize("size", [32, 64])
def test_generated_masks_land_in_their_bucket(size):
    for bucket in range(6):
        for i in range(8):
            rng = np.random.default_rng([bucket, i])
            mask = generate_mask(rng, size, bucket, boxes=i % 2 == 1)
            assert mask.shape == (size, size) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1}
            assert bucket_of(hole_ratio(mask)) == bucket


def test_generator_is_deterministic_for_a_seed():
    a = generate_mask(np.random.default_rng(7), 64, 3)
    b = generate_mask(np.random.default_rng(7), 64, 3)
    c = generate_mask(np.random.default_rng(8), 64, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_load_mask_binarises_resizes_and_inverts(tmp_path):
    write_masks(tmp_path)
    soft = load_mask(tmp_path / "soft.png", 64)
    assert set(np.unique(soft)) == {0, 1} and hole_ratio(soft) == 0.25
    big = load_mask(tmp_path / "big_rgb.png", 32)  # RGB, 128 px -> 32 px
    assert big.shape == (32, 32) and hole_ratio(big) == 0.125
    assert hole_ratio(load_mask(tmp_path / "quarter.png", 64, invert=True)) == 0.75
    mask = load_mask(tmp_path / "quarter.png", 64)
    np.testing.assert_array_equal(decode_mask(encode_mask(mask)), mask)


@pytest.mark.slow
def test_shard_masks_records_every_file(tmp_path):
    expected = write_masks(tmp_path / "src")
    run_shard("masks", tmp_path / "src", "--out", tmp_path / "out", "--size", 32)
    index = read_index(tmp_path / "out")
    assert index["inputs"] == len(expected) == index["samples"] + len(index["skipped"])
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in index["skipped"]}
    got = {}
    with tarfile.open(tmp_path / "out" / index["shards"][0]["name"]) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                meta = json.loads(tar.extractfile(member).read())
                got[meta["source"].rsplit("/", 1)[-1]] = meta
            else:
                png = Image.open(io.BytesIO(tar.extractfile(member).read()))
                assert png.size == (32, 32) and png.mode == "L"
    for name, outcome in expected.items():
        if name in got:
            assert got[name]["bucket_name"] == outcome
            assert bucket_of(got[name]["hole_ratio"]) == got[name]["bucket"]
        else:
            assert outcome in reasons[name], (name, reasons[name])
    assert index["buckets"]["20-30"] == 2 and index["buckets"]["10-20"] == 1


@pytest.mark.slow
def test_generate_equal_buckets_and_deterministic(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_shard("masks", "--generate", 24, "--out", tmp_path / name, "--seed", seed,
                  "--size", 32, "--shard-size", 10, "--boxes")
    a, b, c = (read_index(tmp_path / n) for n in "abc")
    assert a["samples"] == 24 and set(a["buckets"].values()) == {4}
    assert [s["samples"] for s in a["shards"]] == [10, 10, 4]
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert [s["sha256"] for s in a["shards"]] != [s["sha256"] for s in c["shards"]]


@pytest.mark.slow
def test_generate_rejects_counts_that_cannot_be_equal(tmp_path):
    proc = run_shard("masks", "--generate", 10, "--out", tmp_path / "x", check=False)
    assert proc.returncode != 0 and "multiple of 6" in proc.stderr


@pytest.mark.slow
def test_masks_of_an_empty_folder_fail_clearly(tmp_path):
    (tmp_path / "none").mkdir()
    proc = run_shard("masks", tmp_path / "none", "--out", tmp_path / "x", check=False)
    assert proc.returncode != 0 and "no samples written" in proc.stderr
    assert read_index(tmp_path / "x")["samples"] == 0


@pytest.mark.slow
def test_masks_stored_as_0_1_values_are_binary_masks(tmp_path):
    quarter = np.zeros((64, 64), np.uint8)
    quarter[:, :16] = 1  # 25 % hole, saved as 0/1 (as label maps often are)
    Image.fromarray(quarter).save(tmp_path / "zero_one.png")
    assert hole_ratio(load_mask(tmp_path / "zero_one.png", 64)) == 0.25
    run_shard("masks", tmp_path / "zero_one.png", "--out", tmp_path / "out", "--size", 32)
    index = read_index(tmp_path / "out")
    assert index["samples"] == 1 and index["skipped"] == [] and index["buckets"]["20-30"] == 1


def test_a_coloured_picture_is_not_a_mask(tmp_path):
    """A plot (white ground, a few coloured lines) is nearly black and white once grey; its colour
    gives it away. A mask saved as a noisy RGB JPEG keeps its channels close and still loads."""
    plot = np.full((64, 64, 3), 255, np.uint8)
    plot[20:24, :] = (31, 119, 180)  # a blue line over 6 % of the pixels
    Image.fromarray(plot).save(tmp_path / "plot.png")
    with pytest.raises(ImageError, match="not a mask: 6.2 % of its pixels are coloured"):
        load_mask(tmp_path / "plot.png", 32)
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(tmp_path / "mask.jpg", quality=60)
    assert hole_ratio(load_mask(tmp_path / "mask.jpg", 64)) == 0.5
