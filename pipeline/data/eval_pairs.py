"""The fixed evaluation pairing: every test image once in every hole-area bucket, each with a mask
chosen by a fixed rule, so two evaluations (and training validation) see identical inputs.

Eval batches are `decode.collate` batches plus key, mask_key (lists), bucket (long) and
hole_ratio (float).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.decode import collate, image_and_edge
from pipeline.data.images import IMAGE_EXTS, canny_edges, find_inputs, load_image, natural_key
from pipeline.data.masks import (BUCKETS, bucket_name, bucket_of, decode_mask, hole_ratio,
                                 load_mask, resize_mask)
from pipeline.data.shards import DataError, has_shards, read_at, resolve_shards, tar_members

log = logging.getLogger(__name__)




def _image_from_tar(shard: str, image: tuple[int, int], edge: Optional[tuple[int, int]],
                    size: int) -> tuple[np.ndarray, np.ndarray]:
    return image_and_edge(read_at(shard, image), edge and read_at(shard, edge), size)


def _image_from_file(path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = load_image(path, size)
    return rgb, (canny_edges(rgb) > 0).astype(np.uint8)


def _mask_from_tar(shard: str, where: tuple[int, int], size: int) -> np.ndarray:
    return resize_mask(decode_mask(read_at(shard, where)), size)


def _mask_from_file(path: str, size: int) -> np.ndarray:
    return load_mask(path, size)


def _list(spec: str, shard_ext: Sequence[str], from_tar: Callable, from_file: Callable,
          with_edge: bool):
    """[(key, loader(size))] sorted by key, from shards or from a plain folder of images."""
    entries = []
    if has_shards(spec):
        for shard in resolve_shards(spec):
            for key, files in tar_members(shard).items():
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
