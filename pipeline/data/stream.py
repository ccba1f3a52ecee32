"""The training stream: resampled WebDataset shards, each image paired with a random mask of the
training pool, as `decode.collate` batches.

Training stream determinism: every (rank, logical worker, epoch) stream is a pure function of the
seed: which shards it draws, the shuffle order, the flips and the mask choices. DataLoader
workers hand out batches round-robin, so the global batch sequence is fixed too, and
`skip_batches` can jump to any position: whole epochs are skipped outright, and inside an epoch
the consumed samples are read but not decoded. (A sample that fails to decode is dropped in a
live run but counted during a replay, so a resume that replays over one is shifted by a sample.)
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.decode import collate, image_and_edge, image_bytes
from pipeline.data.masks import BUCKETS, bucket_name, decode_mask, resize_mask
from pipeline.data.shards import DataError, list_names, read_at, resolve_shards, tar_members

log = logging.getLogger(__name__)


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
        for key, files in tar_members(shard).items():
            if "mask.png" not in files or "json" not in files:
                continue
            bucket = json.loads(read_at(shard, files["json"]))["bucket"]
            if bucket in wanted:
                pool.keys.append(key)
                pool.pngs.append(read_at(shard, files["mask.png"]))
                pool.buckets.append(bucket)
    if not pool.keys:
        names = ", ".join(bucket_name(b) for b in sorted(wanted))
        raise DataError(f"no masks in buckets {names} in '{spec}'")
    return pool


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
                rgb, edge = image_and_edge(image_bytes(sample), sample.get("edge.png"),
                                           self.image_size)
                mask = resize_mask(decode_mask(self.masks.pngs[mask_index]), self.image_size)
            except Exception as err:  # noqa: BLE001 - one bad sample must not stop training
                self.skips.add(f"{sample.get('__url__')} sample {sample.get('__key__')}: {err!r}")
                bad_streak += 1
                if bad_streak >= self.max_bad_samples:
                    raise DataError(
                        f"{bad_streak} samples in a row failed to decode (data.max_bad_samples) "
                        f"in shards {list_names(self._pool(logical), 3)}: are they image shards? "
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


