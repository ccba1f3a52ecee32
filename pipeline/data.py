"""Data streams: the resampled WebDataset training stream and the fixed evaluation pairing.

Batches are dicts of float32 NCHW tensors: image [B,3,H,W] in [0,1], gray [B,1,H,W], edge
[B,1,H,W] in {0,1} (Canny of the full image), mask [B,1,H,W] in {0,1} with 1 = hole. Eval
batches add key, mask_key (lists), bucket (long) and hole_ratio (float).

Training stream determinism: every (rank, logical worker, epoch) stream is a pure function of the
seed: which shards it draws, the shuffle order, the flips and the mask choices. DataLoader
workers hand out batches round-robin, so the global batch sequence is fixed too, and
`skip_batches` can jump to any position: whole epochs are skipped outright, and inside an epoch
the consumed samples are read but not decoded. (A sample that fails to decode is dropped in a
live run but counted during a replay, so a resume that replays over one is shifted by a sample.)
"""
from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import random
import re
import tarfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from pipeline.images import (GRAY_WEIGHTS, IMAGE_EXTS, canny_edges, center_square, decode_rgb,
                             find_inputs, load_image, natural_key, resize_rgb)
from pipeline.masks import BUCKETS, bucket_name, bucket_of, decode_mask, hole_ratio, load_mask

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data spec that yields nothing usable; the message names it."""

    def __init__(self, message: str):
        # raised in a DataLoader worker, it is rebuilt in the main process from the worker's
        # whole traceback text, whose last line holds the original message
        if message.startswith("Caught DataError"):
            message = message.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


# ---------------------------------------------------------------------------- shard specs

SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")  # how shard.py names its shards


def _names(paths: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(str(p) for p in paths[:limit]) + more


def _from_index(index_path: Path) -> list[str]:
    """The shards index.json lists, which must be exactly the tars beside it."""
    index = json.loads(index_path.read_text())
    if "shards" not in index:
        splits = ", ".join(sorted(index.get("splits", {}))) or "none"
        raise DataError(f"{index_path} lists no shards (splits: {splits}); "
                        f"point at a split's folder or its index.json instead")
    folder = index_path.parent
    listed = [s["name"] for s in index["shards"]]
    missing = [name for name in listed if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{index_path} lists shards that do not exist: {_names(missing)}")
    unlisted = sorted(p.name for p in folder.glob("*.tar") if p.name not in set(listed))
    if unlisted:
        raise DataError(f"{folder} holds tars its index.json does not list: {_names(unlisted)} "
                        f"(two shard runs mixed?); re-run shard.py into a new folder")
    return [str(folder / name) for name in listed]


def resolve_shards(spec: str) -> list[str]:
    """A directory (its *.tar, sorted), an index.json, or a brace/glob pattern -> shard paths.

    Only complete sets: a folder of shard.py's shards must hold the index.json that shard.py
    writes last and that lists exactly its tars; every local shard a brace pattern names must
    exist."""
    path = Path(spec)
    if path.is_dir():
        if (path / "index.json").is_file():
            return _from_index(path / "index.json")
        shards = sorted(str(p) for p in path.glob("*.tar"))
        ours = [s for s in shards if SHARD_NAME.match(Path(s).name)]
        if ours or any(path.glob("*.tar.part")):
            raise DataError(f"{spec} holds shard.py shards but no index.json: an incomplete set "
                            f"(interrupted or out of disk?); re-run shard.py")
        if shards:
            return shards  # tars made by another tool: nothing says what a full set is
        raise DataError(f"no *.tar shards in directory {spec}")
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"index file not found: {spec}")
        return _from_index(path)
    shards: list[str] = []
    missing: list[str] = []
    for item in braceexpand.braceexpand(spec):
        if "://" in item or item.startswith("pipe:"):
            shards.append(item)  # remote: the stream reports failures per shard
        elif any(c in item for c in "*?["):
            shards.extend(sorted(glob.glob(item)))
        elif Path(item).is_file():
            shards.append(item)
        else:
            missing.append(item)
    if not shards:
        raise DataError(f"no shards match '{spec}' (expected a directory of .tar files, an "
                        f"index.json, or a brace pattern like data/shard-{{000000..000009}}.tar)")
    if missing:
        raise DataError(f"{len(missing)} of {len(shards) + len(missing)} shards named by "
                        f"'{spec}' do not exist: {_names(missing)}")
    return shards


# ---------------------------------------------------------------------------- bad data

class SkipCounter:
    """Counts unreadable shards/samples across DataLoader worker processes (shared memory).

    Its `handler` is a WebDataset exception handler: log with the shard name, count, go on.
    Logging is rate-limited per process: the first few in full, then a count every minute, so
    a stream of bad data cannot fill the log.
    """

    FIRST_LOGGED = 5
    SUMMARY_EVERY_S = 60.0

    def __init__(self):
        self._value = multiprocessing.Value("q", 0)
        self._logged = 0
        self._unlogged = 0
        self._last_summary = 0.0

    @property
    def count(self) -> int:
        return int(self._value.value)

    def add(self, reason: str) -> None:
        with self._value.get_lock():
            self._value.value += 1
        if self._logged < self.FIRST_LOGGED:
            self._logged += 1
            log.warning("skipped bad data: %s", reason)
            self._last_summary = time.monotonic()
            return
        self._unlogged += 1
        if time.monotonic() - self._last_summary >= self.SUMMARY_EVERY_S:
            log.warning("skipped %d more bad shards/samples (%d in all), latest: %s",
                        self._unlogged, self.count, reason)
            self._unlogged, self._last_summary = 0, time.monotonic()

    def handler(self, exn: BaseException) -> bool:
        self.add(repr(exn))  # webdataset appends the shard URL to exn.args
        return True


# ---------------------------------------------------------------------------- decoding

def image_and_edge(image: bytes, edge: Optional[bytes],
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard bytes -> (rgb uint8, edge {0,1}); shards made at another size are resized and
    their edges recomputed at this size (Canny depends on scale)."""
    rgb = decode_rgb(image)[0]
    if rgb.shape[0] == rgb.shape[1] == size and edge is not None:
        return rgb, decode_mask(edge)  # an edge map is stored as a mask is: 0/255 PNG
    rgb = resize_rgb(center_square(rgb), size)
    return rgb, (canny_edges(rgb) > 0).astype(np.uint8)


def mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[0] == size:
        return mask
    return (np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.Resampling.NEAREST))
            >= 128).astype(np.uint8)


def _image_bytes(sample: dict) -> bytes:
    for ext in ("jpg", "png", "jpeg"):
        if ext in sample:
            return sample[ext]
    raise DataError(f"sample has no image (jpg/png): fields {sorted(sample)}")


def collate(items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """[(rgb HxWx3 uint8, edge HxW {0,1}, mask HxW {0,1})] -> the batch dict."""
    # transpose while still uint8: converting a permuted (strided) tensor to float is ~7x slower
    rgb = np.ascontiguousarray(np.stack([i[0] for i in items]).transpose(0, 3, 1, 2))
    image = torch.from_numpy(rgb).float().div_(255)
    r, g, b = GRAY_WEIGHTS
    gray = (image[:, 0:1] * r).add_(image[:, 1:2], alpha=g).add_(image[:, 2:3], alpha=b)
    return {
        "image": image,
        "gray": gray,
        "edge": torch.from_numpy(np.stack([i[1] for i in items])[:, None]).float(),
        "mask": torch.from_numpy(np.stack([i[2] for i in items])[:, None]).float(),
    }


# ---------------------------------------------------------------------------- tar random access

def _tar_members(path: str) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {extension: (data offset, size)} for a shard, in tar order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{path} is not a readable tar shard ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0]})") from None
    return samples


def _read_at(path: str, where: tuple[int, int]) -> bytes:
    with open(path, "rb") as f:
        f.seek(where[0])
        return f.read(where[1])


def _has_shards(spec: str) -> bool:
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        return False  # one image file, not a shard
    return not path.is_dir() or any(path.glob("*.tar")) or (path / "index.json").is_file()


# ---------------------------------------------------------------------------- masks

@dataclass
class MaskPool:
    """Every training mask as PNG bytes (small), so each worker can draw any of them."""
    keys: list[str]
    pngs: list[bytes]
    buckets: list[int]

    def __len__(self) -> int:
        return len(self.keys)


def read_mask_pool(spec: str, buckets: Optional[Sequence[int]] = None) -> MaskPool:
    wanted = set(range(len(BUCKETS)) if buckets is None else buckets)
    bad = wanted - set(range(len(BUCKETS)))
    if bad:
        raise DataError(f"data.mask_buckets: {sorted(bad)} not in 0..{len(BUCKETS) - 1}")
    pool = MaskPool([], [], [])
    for shard in resolve_shards(spec):
        for key, files in _tar_members(shard).items():
            if "mask.png" not in files or "json" not in files:
                continue
            bucket = json.loads(_read_at(shard, files["json"]))["bucket"]
            if bucket in wanted:
                pool.keys.append(key)
                pool.pngs.append(_read_at(shard, files["mask.png"]))
                pool.buckets.append(bucket)
    if not pool.keys:
        names = ", ".join(bucket_name(b) for b in sorted(wanted))
        raise DataError(f"no masks in buckets {names} in '{spec}'")
    return pool


# ---------------------------------------------------------------------------- training stream

class TrainStream(IterableDataset):
    """Per worker: resampled shards -> tar samples -> shuffle -> decode, flip, pair -> batches."""

    def __init__(self, shards: list[str], masks: MaskPool, *, image_size: int, batch_size: int,
                 shuffle_buffer: int, flip: bool, batches_per_epoch: int, seed: int, rank: int,
                 world_size: int, num_workers: int, skip_batches: int, skips: SkipCounter,
                 max_bad_samples: int):
        super().__init__()
        self.shards, self.masks, self.skips = shards, masks, skips
        self.image_size, self.batch_size, self.flip = image_size, batch_size, flip
        self.shuffle_buffer, self.batches_per_epoch = shuffle_buffer, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers, self.skip_batches = max(1, num_workers), skip_batches
        self.max_bad_samples = max_bad_samples
        self._iterations = 0  # per process copy: persistent workers keep counting
        self._draws_without_sample = 0  # shard draws since the last sample (all-bad guard)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise DataError(f"stream built for {self.workers} workers runs on {info.num_workers}")
        per_epoch = self.workers * self.batches_per_epoch
        epoch = self.skip_batches // per_epoch + self._iterations
        # The first pass starts mid-epoch: worker 0 must play the logical worker whose batch is
        # next in the round-robin order, and every logical worker drops what was consumed.
        offset = self.skip_batches % per_epoch if self._iterations == 0 else 0
        self._iterations += 1
        logical = (worker + offset) % self.workers
        yield from self._batches(logical, epoch, skip=len(range(logical, offset, self.workers)))

    def _pool(self, logical: int) -> list[str]:
        streams = self.world_size * self.workers
        stream = self.rank * self.workers + logical
        return self.shards[stream::streams] if len(self.shards) >= streams else self.shards

    def _shard_urls(self, logical: int, epoch: int):
        """Resampled shard draws; disjoint shard subsets per (rank, worker) when there are
        enough shards, all shards otherwise (resampling keeps every stream the same length)."""
        pool = self._pool(logical)
        rng = random.Random(f"shards:{self.seed}:{self.rank}:{logical}:{epoch}")
        while True:
            self._draws_without_sample += 1
            if self._draws_without_sample > 10 * len(pool) + 10:
                raise DataError(f"no readable sample in {len(pool)} shards, e.g. {pool[0]}")
            yield {"url": rng.choice(pool)}

    def _batches(self, logical: int, epoch: int, skip: int):
        if skip >= self.batches_per_epoch:
            return  # this worker's share of the epoch was consumed before the resume point
        tag = f"{self.seed}:{self.rank}:{logical}:{epoch}"
        self._draws_without_sample = 0
        samples = wds.tarfile_to_samples(handler=self.skips.handler)(
            self._shard_urls(logical, epoch))
        samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                              rng=random.Random(f"shuffle:{tag}"))(samples)
        rng = np.random.default_rng([self.seed, self.rank, logical, epoch])
        to_skip = skip * self.batch_size
        produced, batch, bad_streak = skip, [], 0
        for sample in samples:
            self._draws_without_sample = 0
            flip = self.flip and rng.random() < 0.5
            mask_index = int(rng.integers(len(self.masks)))
            if to_skip:
                to_skip -= 1  # replayed: same random draws, no decoding
                continue
            try:
                rgb, edge = image_and_edge(_image_bytes(sample), sample.get("edge.png"),
                                           self.image_size)
                mask = mask_at(decode_mask(self.masks.pngs[mask_index]), self.image_size)
            except Exception as err:  # noqa: BLE001 - one bad sample must not stop training
                self.skips.add(f"{sample.get('__url__')} sample {sample.get('__key__')}: {err!r}")
                bad_streak += 1
                if bad_streak >= self.max_bad_samples:
                    raise DataError(
                        f"{bad_streak} samples in a row failed to decode (data.max_bad_samples) "
                        f"in shards {_names(self._pool(logical), 3)}: are they image shards? "
                        f"Last: sample {sample.get('__key__')}: {err}") from None
                continue
            bad_streak = 0
            if flip:  # a view: collate's np.stack makes the one copy
                rgb, edge = rgb[:, ::-1], edge[:, ::-1]
            batch.append((rgb, edge, mask))
            if len(batch) == self.batch_size:
                yield collate(batch)
                produced, batch = produced + 1, []
                if produced == self.batches_per_epoch:
                    return


def train_loader(data_cfg, seed: int, rank: int, world_size: int,
                 skip_batches: int = 0) -> DataLoader:
    """The training DataLoader for one rank. Each pass yields samples_per_epoch // batch_size
    batches per worker (equal on every rank); recreate the iterator on StopIteration.

    `loader.skips.count` is the number of bad shards/samples skipped so far (all workers).
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    shards = resolve_shards(data_cfg.train)
    buckets = None if data_cfg.mask_buckets is None else list(data_cfg.mask_buckets)
    masks = read_mask_pool(data_cfg.masks, buckets)
    skips = SkipCounter()
    stream = TrainStream(
        shards, masks, image_size=data_cfg.image_size, batch_size=data_cfg.batch_size,
        shuffle_buffer=max(1, data_cfg.shuffle_buffer), flip=data_cfg.flip,
        batches_per_epoch=max(1, data_cfg.samples_per_epoch // data_cfg.batch_size), seed=seed,
        rank=rank, world_size=world_size, num_workers=data_cfg.num_workers,
        skip_batches=skip_batches, skips=skips, max_bad_samples=data_cfg.max_bad_samples)
    workers = data_cfg.num_workers
    loader = DataLoader(stream, batch_size=None, num_workers=workers,
                        persistent_workers=workers > 0,  # keeps each worker's epoch count
                        generator=torch.Generator().manual_seed(seed + rank))
    loader.skips = skips
    return loader


# ---------------------------------------------------------------------------- evaluation

def _image_from_tar(shard: str, image: tuple[int, int], edge: Optional[tuple[int, int]],
                    size: int) -> tuple[np.ndarray, np.ndarray]:
    return image_and_edge(_read_at(shard, image), edge and _read_at(shard, edge), size)


def _image_from_file(path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = load_image(path, size)
    return rgb, (canny_edges(rgb) > 0).astype(np.uint8)


def _mask_from_tar(shard: str, where: tuple[int, int], size: int) -> np.ndarray:
    return mask_at(decode_mask(_read_at(shard, where)), size)


def _mask_from_file(path: str, size: int) -> np.ndarray:
    return load_mask(path, size)


def _list(spec: str, shard_ext: Sequence[str], from_tar: Callable, from_file: Callable,
          with_edge: bool):
    """[(key, loader(size))] sorted by key, from shards or from a plain folder of images."""
    entries = []
    if _has_shards(spec):
        for shard in resolve_shards(spec):
            for key, files in _tar_members(shard).items():
                ext = next((e for e in shard_ext if e in files), None)
                if ext is None:
                    continue
                extra = (files.get("edge.png"),) if with_edge else ()
                entries.append((key, partial(from_tar, shard, files[ext], *extra)))
    else:
        jobs, _skipped = find_inputs([spec], IMAGE_EXTS)
        entries = [(job.key, partial(from_file, job.source)) for job in jobs]
    if not entries:
        raise DataError(f"no images found in '{spec}'")
    return sorted(entries, key=lambda e: natural_key(e[0]))


def eval_pairs(images: str, masks: str, image_size: int,
               per_bucket: Optional[int] = None) -> list[dict]:
    """Fixed pairing: each image (the first `per_bucket` by key, or all) once per bucket, with
    mask number (image position mod the bucket's mask count) of that bucket's sorted masks.

    Each pair: image_key, mask_key, bucket, hole_ratio (at image_size), load_image(size) ->
    (rgb, edge), load_mask(size) -> mask.
    """
    image_list, skipped = [], []
    for key, load in _list(images, ("jpg", "png", "jpeg"), _image_from_tar, _image_from_file,
                           with_edge=True):
        if per_bucket is not None and len(image_list) == per_bucket:
            break
        # decoded once here, so that a bad file is skipped and counted (as shard.py does)
        # rather than stopping the evaluation mid-run
        try:
            load(image_size)
        except Exception as err:  # noqa: BLE001 - a bad image file is reported, not fatal
            where = (load.args[0] if load.func is _image_from_file else
                     f"{load.args[0]} sample {key}")
            log.warning("eval images: skipping %s: %s", where, err)
            skipped.append({"path": str(where), "reason": str(err) or repr(err)})
            continue
        image_list.append((key, load))
    if not image_list:
        raise DataError(f"no readable images in '{images}' ({len(skipped)} skipped, e.g. "
                        f"{skipped[0]['path']}: {skipped[0]['reason']})")
    by_bucket: dict[int, list] = {b: [] for b in range(len(BUCKETS))}
    bad_masks = []
    for key, load in _list(masks, ("mask.png",), _mask_from_tar, _mask_from_file,
                             with_edge=False):
        try:
            ratio = hole_ratio(load(image_size))
        except Exception as err:  # noqa: BLE001 - a bad mask file is reported, not fatal
            log.warning("eval masks: skipping %s: %s", key, err)
            bad_masks.append(f"{key}: {err}")
            continue
        bucket = bucket_of(ratio)
        if bucket is not None:
            by_bucket[bucket].append((key, load, ratio))
    pairs = []
    for bucket, bucket_masks in by_bucket.items():
        if not bucket_masks:
            log.warning("eval masks '%s': none in bucket %s", masks, bucket_name(bucket))
            continue
        for position, (key, load) in enumerate(image_list):
            mask_key, load_mask_fn, ratio = bucket_masks[position % len(bucket_masks)]
            pairs.append({"image_key": key, "mask_key": mask_key, "bucket": bucket,
                          "hole_ratio": ratio, "load_image": load, "load_mask": load_mask_fn})
    if not pairs:
        why = (f"; {len(bad_masks)} files skipped, e.g. {bad_masks[0]}" if bad_masks else "")
        raise DataError(f"no usable masks (hole ratio in 0-60 %) in '{masks}'{why}")
    return _PairList(pairs, skipped=skipped)


class _PairList(list):
    """eval_pairs' pairs; `.skipped` lists the images left out ({path, reason})."""

    def __init__(self, items=(), skipped=None):
        super().__init__(items)
        self.skipped = skipped if skipped is not None else []


class EvalPairs(Dataset):
    def __init__(self, pairs: list[dict], image_size: int):
        self.pairs, self.image_size = pairs, image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        rgb, edge = pair["load_image"](self.image_size)
        return {"arrays": (rgb, edge, pair["load_mask"](self.image_size)), "pair": pair}


def _collate_eval(items: list[dict]) -> dict:
    batch = collate([item["arrays"] for item in items])
    masks = batch["mask"]
    batch["key"] = [item["pair"]["image_key"] for item in items]
    batch["mask_key"] = [item["pair"]["mask_key"] for item in items]
    batch["bucket"] = torch.tensor([item["pair"]["bucket"] for item in items], dtype=torch.long)
    batch["hole_ratio"] = masks.flatten(1).mean(1)
    return batch


def eval_loader(pairs: list[dict], image_size: int, batch_size: int,
                num_workers: int = 0) -> DataLoader:
    """Eval batches in pair order (deterministic; no shuffling, no flips)."""
    return DataLoader(EvalPairs(pairs, image_size), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=_collate_eval)
