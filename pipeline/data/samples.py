"""Per-sample work of shard.py: decode one input, encode what goes into the shard, or say why it
is skipped; `run_parallel` maps it over worker processes in input order.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import signal
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.images import ImageError, ImageInput, canny_edges, read_image
from pipeline.data.masks import (BUCKETS, bucket_name, bucket_of, encode_mask, generate_mask,
                                 hole_ratio, load_mask)

JPEG_QUALITY = 95


@dataclass
class Result:
    key: str
    source: str
    files: Optional[dict] = None  # extension -> bytes; None when skipped
    reason: str = ""
    meta: Optional[dict] = None


def _read(job: ImageInput):
    return job.data if job.data is not None else job.source


def encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def encode_edge(edge: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # fast deflate: sparse 0/255 maps compress well anyway; level 6 costs ~2 ms more per image
    Image.fromarray(edge).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_sample(job: ImageInput, size: int, fmt: str, min_size: int) -> Result:
    try:
        rgb, (width, height) = read_image(_read(job), size)
    except ImageError as err:
        return Result(job.key, job.source, reason=str(err))
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop the run
        return Result(job.key, job.source, reason=f"decoder failed: {err!r}")
    if min(width, height) < min_size:
        return Result(job.key, job.source,
                      reason=f"smaller than --min-size {min_size} ({width}x{height})")
    meta = {"source": job.source, "original_size": [width, height], "size": size}
    files = {fmt: encode_image(rgb, fmt), "edge.png": encode_edge(canny_edges(rgb)),
             "json": json.dumps(meta).encode()}
    return Result(job.key, job.source, files=files)


def _mask_result(key: str, source: str, mask: np.ndarray) -> Result:
    ratio = hole_ratio(mask)
    bucket = bucket_of(ratio)
    if bucket is None:
        what = ("all-empty mask (no hole)" if ratio == 0 else
                "all-hole mask" if ratio == 1 else f"hole ratio {ratio:.3f} is above 60 %")
        return Result(key, source, reason=f"{what}: not in any bucket")
    meta = {"source": source, "hole_ratio": ratio, "bucket": bucket,
            "bucket_name": bucket_name(bucket), "size": mask.shape[0]}
    files = {"mask.png": encode_mask(mask), "json": json.dumps(meta).encode()}
    return Result(key, source, files=files, meta=meta)


def mask_sample(job: ImageInput, size: int, invert: bool) -> Result:
    try:
        mask = load_mask(_read(job), size, invert=invert)
    except ImageError as err:
        return Result(job.key, job.source, reason=str(err))
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop the run
        return Result(job.key, job.source, reason=f"decoder failed: {err!r}")
    return _mask_result(job.key, job.source, mask)


def generated_mask(index: int, size: int, seed: int, boxes: bool) -> Result:
    """Mask number `index` of a generated set: bucket index % 6, its own seeded generator."""
    bucket = index % len(BUCKETS)
    mask = generate_mask(np.random.default_rng([seed, index]), size, bucket, boxes=boxes)
    return _mask_result(f"gen_{index:07d}", f"generated seed={seed} index={index}", mask)


def _quiet_worker() -> None:
    """Workers die quietly on the SIGTERM with which the pool stops them and leave Ctrl-C to the
    main process, which stops the pool (no traceback from each worker)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_parallel(fn: Callable, items: Sequence, workers: int, desc: str
                 ) -> Generator[Result, None, None]:
    """fn over items in input order, on `workers` processes, with a progress bar."""
    bar = dict(total=len(items), desc=desc, unit="img", mininterval=1.0, dynamic_ncols=True)
    if workers <= 1 or len(items) < 2:
        yield from tqdm(map(fn, items), **bar)
        return
    chunk = max(1, min(32, len(items) // (workers * 8)))
    with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
        yield from tqdm(pool.imap(fn, items, chunksize=chunk), **bar)
