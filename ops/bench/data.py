"""Benchmark the data path: shard writing (images/s) and the training stream (samples/s/worker).

    python ops/bench/data.py [--images 160] [--size 256] [--json runs/bench/data.json]

Source photos are the bundled sample photos resized to Paris StreetView's 936x537 JPEGs. The
stream is measured in-process (num_workers=0: exactly one worker's work), decoded, flipped,
paired with masks, batched; the breakdown times each step alone over the same samples.
A GPU needs ~420 samples/s (texture stage, bf16, H200) from 4-8 workers: >= 150 per worker.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from omegaconf import OmegaConf
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.cores import usable_cores
from pipeline.data.decode import collate
from pipeline.data.images import canny_edges, decode_rgb, read_image
from pipeline.data.masks import decode_mask
from pipeline.data.samples import encode_edge, encode_image
from pipeline.data.shards import resolve_shards
from pipeline.data.sources import bundled_photos
from pipeline.data.stream import read_mask_pool, train_loader

SHARD = Path(__file__).resolve().parents[2] / "pipeline" / "shard.py"
FLOOR = 150.0  # samples/s one loader worker must deliver


def make_sources(folder: Path, count: int) -> None:
    photos = list(bundled_photos().values())
    rng = np.random.default_rng(0)
    for i in range(count):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = img.size
        side = rng.uniform(0.6, 1.0)
        box = (0, 0, int(w * side), int(h * side))
        img.crop(box).resize((936, 537), Image.Resampling.BICUBIC).save(
            folder / f"{i:05d}.jpg", quality=90)


def _seconds(*args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(SHARD), *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def shard_cli(*args) -> float:
    """Seconds for one shard.py command, less its start-up (what `--help` takes)."""
    return _seconds(*args) - _seconds("--help")


def per_call_ms(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return 1000 * (time.perf_counter() - start) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160, help="source photos to shard")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60, help="timed stream batches")
    parser.add_argument("--json", default="runs/bench/data.json",
                        help="where to write the results (runs/ is git-ignored)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as inside a DataLoader worker: one worker = one core
    cores = usable_cores()
    result: dict = {"size": args.size, "batch": args.batch, "cores": cores}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        make_sources(tmp / "src", args.images)
        files = sorted((tmp / "src").iterdir())

        # ---- shard writing: one process, then all cores
        for workers in sorted({1, cores}):
            seconds = shard_cli("images", tmp / "src", "--out", tmp / f"img{workers}",
                                "--size", args.size, "--workers", workers)
            result[f"shard_images_per_s_{workers}_workers"] = args.images / seconds
        seconds = shard_cli("masks", "--generate", 600, "--out", tmp / "masks", "--size",
                            args.size, "--workers", 1)
        result["generate_masks_per_s_1_worker"] = 600 / seconds
        sample_files = files[:40]
        rgbs = [read_image(str(f), args.size)[0] for f in sample_files]
        result["shard_breakdown_ms"] = {
            "decode+orient+crop+resize": per_call_ms(lambda f: read_image(str(f), args.size),
                                                     sample_files),
            "canny_sigma2": per_call_ms(canny_edges, rgbs),
            "encode_jpg": per_call_ms(lambda r: encode_image(r, "jpg"), rgbs),
            "encode_edge_png": per_call_ms(encode_edge, [canny_edges(r) for r in rgbs]),
        }

        # ---- the training stream, one worker (in-process)
        cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {
            "train": str(tmp / f"img{cores}"), "masks": str(tmp / "masks"),
            "image_size": args.size, "batch_size": args.batch, "num_workers": 0,
            "shuffle_buffer": 100, "samples_per_epoch": 10 ** 9})
        it = iter(train_loader(cfg, seed=0, rank=0, world_size=1))
        for _ in range(5):
            next(it)  # fill the shuffle buffer
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rate = args.batches * args.batch / (time.perf_counter() - start)
        result["stream_samples_per_s_per_worker"] = rate
        result["ratio_to_floor_150"] = rate / FLOOR

        start = time.perf_counter()
        raw = list(wds.tarfile_to_samples()(iter(
            [{"url": u} for u in resolve_shards(str(tmp / f"img{cores}"))])))
        read_ms = 1000 * (time.perf_counter() - start) / len(raw)
        masks = read_mask_pool(str(tmp / "masks")).pngs
        decoded = [(decode_rgb(s["jpg"])[0], decode_mask(s["edge.png"]),
                    decode_mask(masks[i % len(masks)])) for i, s in enumerate(raw)]
        decoded = [(rgb[:, ::-1], edge[:, ::-1], mask) if i % 2 else (rgb, edge, mask)
                   for i, (rgb, edge, mask) in enumerate(decoded)]  # half flipped, as trained
        batches = [decoded[i:i + args.batch] for i in range(0, len(decoded) - args.batch + 1,
                                                             args.batch)]
        result["stream_breakdown_ms_per_sample"] = {
            "tar_read": read_ms,
            "decode_jpg": per_call_ms(lambda s: decode_rgb(s["jpg"])[0], raw),
            "decode_edge_png": per_call_ms(lambda s: decode_mask(s["edge.png"]), raw),
            "decode_mask_png": per_call_ms(decode_mask, masks),
            "flip+collate": per_call_ms(collate, batches) / args.batch,
        }
        sizes = [len(s["jpg"]) + len(s["edge.png"]) for s in raw]
        result["shard_bytes_per_sample"] = float(np.mean(sizes))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
