"""The shard.py commands: find the inputs, make the samples, write them as a set that replaces OUT
only when complete.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from pipeline.data.images import IMAGE_EXTS, ImageInput, find_inputs
from pipeline.data.masks import BUCKETS
from pipeline.data.samples import generated_mask, image_sample, mask_sample, run_parallel
from pipeline.data.shard_writer import (ShardError, finish_splits, replaced_when_complete, report,
                                        write_set)
from pipeline.data.sources import (SAMPLE_TEST_PHOTOS, bundled_photos, celeba_splits, paris_splits,
                                   photo_crops)


def shard_image_jobs(jobs: list[ImageInput], skipped: list[dict], out: Path, args) -> dict:
    fn = partial(image_sample, size=args.size, fmt=args.format, min_size=args.min_size)
    results = run_parallel(fn, jobs, args.workers, f"images -> {out}")
    info = {"kind": "images", "size": args.size, "format": args.format}
    return write_set(out, results, skipped, len(jobs) + len(skipped), args.shard_size, info)


def cmd_images(args) -> None:
    jobs, skipped = find_inputs(args.src, IMAGE_EXTS)
    out = Path(args.out)
    with replaced_when_complete(out) as staging:
        report(out, shard_image_jobs(jobs, skipped, staging, args))


def cmd_masks(args) -> None:
    out = Path(args.out)
    if args.generate is not None:
        if args.src:
            raise ShardError("give either SRC (mask files to ingest) or --generate N, not both")
        if args.generate <= 0 or args.generate % len(BUCKETS):
            raise ShardError(f"--generate {args.generate}: must be a positive multiple of "
                             f"{len(BUCKETS)} so that every bucket gets the same count")
        fn = partial(generated_mask, size=args.size, seed=args.seed, boxes=args.boxes)
        items, skipped = range(args.generate), []
        info = {"kind": "masks", "size": args.size, "generated": True, "seed": args.seed,
                "boxes": args.boxes}
    else:
        if not args.src:
            raise ShardError("masks: give SRC folders of mask images, or --generate N")
        items, skipped = find_inputs(args.src, IMAGE_EXTS)
        fn = partial(mask_sample, size=args.size, invert=args.invert)
        info = {"kind": "masks", "size": args.size, "invert": args.invert}
    with replaced_when_complete(out) as staging:
        results = run_parallel(fn, items, args.workers, f"masks -> {out}")
        index = write_set(staging, results, skipped, len(items) + len(skipped), args.shard_size,
                          info)
        report(out, index)


def cmd_dataset(args) -> None:
    root, out = Path(args.root), Path(args.out)
    if not root.is_dir():
        raise ShardError(f"--root {root}: not a directory")
    splits = paris_splits(root) if args.name == "paris" else celeba_splits(root)
    with replaced_when_complete(out) as staging:
        indexes = {name: shard_image_jobs(jobs, skipped, staging / name, args)
                   for name, (jobs, skipped) in splits.items()}
        finish_splits(out, staging, indexes)


def cmd_sample(args) -> None:
    out = Path(args.out)
    if args.masks % len(BUCKETS):
        raise ShardError(f"--masks {args.masks}: must be a multiple of {len(BUCKETS)} "
                         "so that every bucket gets the same count")
    photos = bundled_photos()
    splits: dict[str, list[ImageInput]] = {"train": [], "test": []}
    for name in sorted(photos):
        split = "test" if name in SAMPLE_TEST_PHOTOS else "train"
        splits[split].extend(photo_crops(name, photos[name], args.crops))
    with replaced_when_complete(out) as staging:
        indexes = {name: shard_image_jobs(jobs, [], staging / name, args)
                   for name, jobs in splits.items()}
        fn = partial(generated_mask, size=args.size, seed=args.seed, boxes=True)
        masks = run_parallel(fn, range(args.masks), args.workers, f"masks -> {out / 'masks'}")
        info = {"kind": "masks", "size": args.size, "generated": True, "seed": args.seed,
                "boxes": True}
        indexes["masks"] = write_set(staging / "masks", masks, [], args.masks, args.shard_size,
                                     info)
        finish_splits(out, staging, indexes)
