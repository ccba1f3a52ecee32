"""pipeline.data: shard specs, the training stream (determinism, resume, DDP split, bad data)
and the evaluation pairing."""
from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.eval_pairs import eval_loader, eval_pairs
from pipeline.data.images import GRAY_WEIGHTS
from pipeline.data.shard_writer import ShardWriter
from pipeline.data.shards import DataError, resolve_shards
from pipeline.data.stream import train_loader
from tests.helpers.data_files import photo, run_shard, save

SIZE = 32


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> Path:
    """9 images in 3 shards of 3."""
    root = tmp_path_factory.mktemp("three")
    for i in range(9):
        save(root / "src" / f"{i}.png", Image.fromarray(photo(40, i)))
    run_shard("images", root / "src", "--out", root / "train", "--size", SIZE, "--shard-size", 3)
    return root / "train"


def data_cfg(train, masks, **kw):
    values = {"train": str(train), "masks": str(masks), "image_size": SIZE, "batch_size": 2,
              "num_workers": 0, "shuffle_buffer": 4, "samples_per_epoch": 6, **kw}
    return OmegaConf.merge(OmegaConf.structured(DataConfig), values)


def take(loader, n):
    """n batches, recreating the iterator at the end of each pass (as the train loop does)."""
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(loader)
    return out


def same(a, b) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "edge", "mask"))


def test_resolve_shards_specs(three_shards, tmp_path):
    names = [str(three_shards / f"shard-00000{i}.tar") for i in range(3)]
    assert resolve_shards(str(three_shards)) == names
    assert resolve_shards(str(three_shards / "index.json")) == names
    assert resolve_shards(str(three_shards / "shard-{000000..000001}.tar")) == names[:2]
    assert resolve_shards(str(three_shards / "shard-*.tar")) == names
    with pytest.raises(DataError, match="no shards match"):
        resolve_shards(str(tmp_path / "shard-{0..3}.tar"))
    with pytest.raises(DataError, match="no \\*.tar shards"):
        resolve_shards(str(tmp_path))


def test_top_level_index_points_at_splits(sample_shards):
    with pytest.raises(DataError, match="splits: masks, test, train"):
        resolve_shards(str(sample_shards / "index.json"))


def test_batches_have_the_contract_layout(sample_shards):
    cfg = data_cfg(sample_shards / "train", sample_shards / "masks", batch_size=4)
    batch = take(train_loader(cfg, seed=0, rank=0, world_size=1), 1)[0]
    assert set(batch) == {"image", "gray", "edge", "mask"}
    for key, channels in (("image", 3), ("gray", 1), ("edge", 1), ("mask", 1)):
        assert batch[key].shape == (4, channels, SIZE, SIZE) and batch[key].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    for key in ("edge", "mask"):
        assert set(batch[key].unique().tolist()) <= {0.0, 1.0}
    weights = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    torch.testing.assert_close(batch["gray"], (batch["image"] * weights).sum(1, keepdim=True))
    assert batch["edge"].sum() > 0 and batch["mask"].sum() > 0


@pytest.mark.slow
def test_stream_is_deterministic_per_seed_and_rank(sample_shards):
    cfg = data_cfg(sample_shards / "train", sample_shards / "masks", num_workers=2)
    a = take(train_loader(cfg, seed=1, rank=0, world_size=1), 7)
    b = take(train_loader(cfg, seed=1, rank=0, world_size=1), 7)
    c = take(train_loader(cfg, seed=2, rank=0, world_size=1), 7)
    assert same(a, b) and not same(a, c)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_skip_batches_replays_the_exact_position(sample_shards, workers):
    cfg = data_cfg(sample_shards / "train", sample_shards / "masks", num_workers=workers)
    per_pass = 3 * max(1, workers)
    full = take(train_loader(cfg, seed=5, rank=1, world_size=2), 2 * per_pass + 2)
    for skip in (1, per_pass - 1, per_pass, per_pass + 1, 2 * per_pass + 1):
        resumed = take(train_loader(cfg, seed=5, rank=1, world_size=2, skip_batches=skip),
                       len(full) - skip)
        assert same(full[skip:], resumed), skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_ranks_two_workers_three_shards_equal_counts(three_shards, sample_shards):
    cfg = data_cfg(three_shards, sample_shards / "masks", num_workers=2, samples_per_epoch=8)
    counts, firsts = [], []
    for rank in (0, 1):
        loader = train_loader(cfg, seed=0, rank=rank, world_size=2)
        for _ in range(2):  # two passes, each must end (StopIteration) with the same count
            batches = list(loader)
            counts.append(sum(len(b["image"]) for b in batches))
        firsts.append(batches[0]["image"])
    assert counts == [16] * 4  # 8 samples x 2 workers per rank and pass
    assert not torch.equal(firsts[0], firsts[1])  # ranks see different data


def shard_images(shard: Path) -> set[bytes]:
    with tarfile.open(shard) as tar:
        return {np.asarray(Image.open(tar.extractfile(m)).convert("RGB")).tobytes()
                for m in tar if m.name.endswith(".jpg")}


def test_ranks_read_disjoint_shards_when_there_are_enough(three_shards, sample_shards):
    cfg = data_cfg(three_shards, sample_shards / "masks", flip=False, samples_per_epoch=6)
    for rank in range(3):
        own = shard_images(three_shards / f"shard-00000{rank}.tar")
        for batch in take(train_loader(cfg, seed=0, rank=rank, world_size=3), 3):
            for image in (batch["image"] * 255).round().byte().permute(0, 2, 3, 1).numpy():
                assert image.tobytes() in own


def test_mask_bucket_filter(sample_shards):
    cfg = data_cfg(sample_shards / "train", sample_shards / "masks", mask_buckets=[5],
                   batch_size=6)
    for batch in take(train_loader(cfg, seed=0, rank=0, world_size=1), 3):
        ratios = batch["mask"].flatten(1).mean(1)
        assert ((ratios > 0.5) & (ratios <= 0.6)).all(), ratios
    with pytest.raises(DataError, match="not in 0..5"):
        train_loader(data_cfg(sample_shards / "train", sample_shards / "masks",
                              mask_buckets=[7]), seed=0, rank=0, world_size=1)


def test_other_image_size_resizes_and_recomputes_edges(sample_shards):
    cfg = data_cfg(sample_shards / "train", sample_shards / "masks", image_size=48)
    batch = take(train_loader(cfg, seed=0, rank=0, world_size=1), 1)[0]
    assert batch["image"].shape[-1] == batch["edge"].shape[-1] == batch["mask"].shape[-1] == 48


def broken_shards(good: Path, out: Path) -> Path:
    """A good shard, a truncated tar, and a shard with an undecodable image."""
    out.mkdir()
    shutil.copy(good / "shard-000001.tar", out / "good.tar")
    with tarfile.open(good / "shard-000000.tar") as tar:
        cut = tar.getmembers()[-2].offset_data + 10  # inside the second-to-last file's data
    (out / "truncated.tar").write_bytes((good / "shard-000000.tar").read_bytes()[:cut])
    writer = ShardWriter(out, 10)
    edge = (out / "x.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(edge)
    writer.add("bad", {"jpg": b"not a jpeg", "edge.png": edge.read_bytes(), "json": b"{}"})
    writer.close()
    (out / "shard-000000.tar").rename(out / "undecodable.tar")
    edge.unlink()
    return out


@pytest.mark.slow
def test_bad_shards_and_samples_are_logged_and_skipped(three_shards, sample_shards, tmp_path,
                                                       caplog):
    shards = broken_shards(three_shards, tmp_path / "mixed")
    cfg = data_cfg(shards, sample_shards / "masks", samples_per_epoch=40)
    loader = train_loader(cfg, seed=0, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        batches = list(loader)
    assert len(batches) == 20 and loader.skips.count >= 2
    text = caplog.text
    assert "truncated.tar" in text and "undecodable.tar" in text and "sample bad" in text
    # counted across worker processes too
    loader = train_loader(data_cfg(shards, sample_shards / "masks", samples_per_epoch=40,
                                   num_workers=2), seed=0, rank=0, world_size=1)
    assert len(list(loader)) == 40 and loader.skips.count >= 2


def test_only_bad_shards_is_an_error_not_a_hang(tmp_path, sample_shards):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.tar").write_bytes(b"\0" * 100)
    loader = train_loader(data_cfg(tmp_path / "bad", sample_shards / "masks"), 0, 0, 1)
    with pytest.raises(DataError, match="no readable sample"):
        next(iter(loader))


@pytest.mark.slow
def test_eval_pairing_is_fixed_and_covers_every_bucket(sample_shards):
    pairs = eval_pairs(str(sample_shards / "test"), str(sample_shards / "masks"), SIZE)
    again = eval_pairs(str(sample_shards / "test" / "index.json"),
                       str(sample_shards / "masks"), SIZE)
    strip = lambda ps: [(p["image_key"], p["mask_key"], p["bucket"], p["hole_ratio"])  # noqa: E731
                        for p in ps]
    assert strip(pairs) == strip(again)
    images = {p["image_key"] for p in pairs}
    assert len(pairs) == 6 * len(images)
    for bucket in range(6):
        assert sorted(p["image_key"] for p in pairs if p["bucket"] == bucket) == sorted(images)
    assert all(p["bucket"] * 0.1 < p["hole_ratio"] <= p["bucket"] * 0.1 + 0.1 for p in pairs)
    subset = eval_pairs(str(sample_shards / "test"), str(sample_shards / "masks"), SIZE,
                        per_bucket=2)
    assert len(subset) == 12 and strip(subset) == [t for t in strip(pairs) if t[0] in
                                                   {p["image_key"] for p in subset}]
    first = [b for b in eval_loader(pairs, SIZE, batch_size=8, num_workers=2)]
    second = [b for b in eval_loader(pairs, SIZE, batch_size=8)]
    assert sum(len(b["key"]) for b in first) == len(pairs)
    assert same(first, second)
    batch = first[0]
    assert batch["key"] == [p["image_key"] for p in pairs[:8]]
    assert batch["bucket"].dtype == torch.long and batch["hole_ratio"].dtype == torch.float32
    torch.testing.assert_close(batch["hole_ratio"],
                               torch.tensor([p["hole_ratio"] for p in pairs[:8]]))


def test_eval_from_plain_folders(tmp_path):
    for i in range(3):
        save(tmp_path / "images" / f"{i}.jpg", Image.fromarray(photo(40, i)))
    for name, cols in (("a", 4), ("b", 12)):
        mask = np.zeros((64, 64), np.uint8)
        mask[:, :cols] = 255  # 6.25 % and 18.75 %
        save(tmp_path / "masks" / f"{name}.png", Image.fromarray(mask))
    pairs = eval_pairs(str(tmp_path / "images"), str(tmp_path / "masks"), SIZE)
    assert [(p["image_key"], p["mask_key"], p["bucket"]) for p in pairs] == [
        ("0_jpg", "a_png", 0), ("1_jpg", "a_png", 0), ("2_jpg", "a_png", 0),
        ("0_jpg", "b_png", 1), ("1_jpg", "b_png", 1), ("2_jpg", "b_png", 1)]
    batch = next(iter(eval_loader(pairs, SIZE, batch_size=6)))
    assert batch["image"].shape == (6, 3, SIZE, SIZE) and batch["edge"].sum() > 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        eval_pairs(str(tmp_path / "empty"), str(tmp_path / "masks"), SIZE)
    with pytest.raises(DataError, match="no shards match"):
        eval_pairs(str(tmp_path / "nowhere"), str(tmp_path / "masks"), SIZE)


def test_only_complete_shard_sets_are_used(three_shards, tmp_path):
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(three_shards, folder)
        return folder

    no_index = copy("no_index")
    (no_index / "index.json").unlink()  # what an interrupted shard.py used to leave
    with pytest.raises(DataError, match="no index.json: an incomplete set"):
        resolve_shards(str(no_index))
    lost = copy("lost")
    (lost / "shard-000001.tar").unlink()
    for spec in (lost, lost / "index.json"):
        with pytest.raises(DataError, match="do not exist: .*shard-000001.tar"):
            resolve_shards(str(spec))
    extra = copy("extra")
    shutil.copy(extra / "shard-000000.tar", extra / "shard-000007.tar")
    with pytest.raises(DataError, match="does not list: shard-000007.tar"):
        resolve_shards(str(extra))
    with pytest.raises(DataError, match="7 of 10 shards .* do not exist: .*shard-000003.tar"):
        resolve_shards(str(three_shards / "shard-{000000..000009}.tar"))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stream_of_undecodable_samples_stops_with_the_shards_named(sample_shards, caplog,
                                                                     workers):
    masks = sample_shards / "masks"  # mask shards given as training images: nothing decodes
    cfg = data_cfg(masks, masks, num_workers=workers, max_bad_samples=30, samples_per_epoch=4000)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        with pytest.raises(DataError) as err:
            next(iter(train_loader(cfg, seed=0, rank=0, world_size=1)))
    message = str(err.value)
    assert "\n" not in message and message.startswith("30 samples in a row failed to decode")
    assert "data.max_bad_samples" in message and str(masks / "shard-000000.tar") in message
    if workers == 0:  # this process's log: the first few in full, not one line per sample
        assert 1 <= caplog.text.count("skipped bad data") <= 5
