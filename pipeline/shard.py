"""Make WebDataset shards: images (+ Canny edges), masks (ingested or generated), a sample.

    python pipeline/shard.py images SRC [SRC ...] --out OUT [--size 256] [--format jpg|png]
    python pipeline/shard.py masks SRC --out OUT [--invert]
    python pipeline/shard.py masks --generate N --out OUT --seed S [--boxes]
    python pipeline/shard.py dataset paris|celeba-hq --root DIR --out OUT
    python pipeline/shard.py sample --out OUT

Every output folder gets an index.json: shards (name, samples, sha256), `samples`, `inputs`,
`skipped` ([{path, reason}]) and the command line; inputs == samples + len(skipped).
The exit status is 0 when every folder written holds at least one sample, else 2 with a
one-line reason. OUT is replaced only by a complete new set: everything is written into a
temporary sibling (.OUT.partial-PID) first, so a failed, interrupted or out-of-disk run leaves
OUT exactly as it was. OUT may hold only what shard.py writes (shards, index.json, split folders).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import sys
import tarfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Generator, Iterator, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import exit_codes
from pipeline.cores import usable_cores
from pipeline.images import (IMAGE_EXTS, ImageError, ImageInput, canny_edges, find_inputs,
                             read_image)
from pipeline.masks import (BUCKETS, bucket_name, bucket_of, encode_mask, generate_mask,
                            hole_ratio, load_mask)

SHARD_PATTERN = "shard-{:06d}.tar"
# what shard.py writes into a set (a .part shard: left by an interrupted older version)
OWN_FILE = re.compile(r"^(shard-\d{6}\.tar(\.part)?|index\.json)$")
JPEG_QUALITY = 95
# Paris StreetView as distributed by Pathak et al. (and as re-packed by others): first match wins
PARIS_TRAIN_DIRS = ("paris_train_original", "paris_train", "train")
PARIS_TEST_DIRS = ("paris_eval_gt", "paris_eval", "eval_gt", "val", "test")
CELEBA_DIRS = ("CelebA-HQ-img", "celeba_hq", "CelebA-HQ")
CELEBA_TRAIN = 28000  # ids 0..27999 train, 28000..29999 test
# the photos inside installed wheels that `sample` uses; test photos are never cropped into train
SAMPLE_TEST_PHOTOS = ("coffee", "grace_hopper")


class ShardError(RuntimeError):
    """Nothing usable was written; the message says why."""


class NoSamplesError(ShardError):
    """Every input was skipped."""


@dataclass
class Result:
    key: str
    source: str
    files: Optional[dict] = None  # extension -> bytes; None when skipped
    reason: str = ""
    meta: Optional[dict] = None


# ---------------------------------------------------------------------------- per-sample work

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
    """Workers die quietly on the SIGTERM with which the pool stops them (not via _stop) and
    leave Ctrl-C to the main process, which stops the pool (no traceback from each worker)."""
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


# ---------------------------------------------------------------------------- writing

class ShardWriter:
    """Tar shards of `shard_size` samples; fixed tar metadata so equal input gives equal sha256."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.shards: list[dict] = []
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0

    def add(self, key: str, files: dict) -> None:
        if self._tar is None:
            name = SHARD_PATTERN.format(len(self.shards))
            self._tar = tarfile.open(self.out / name, "w", format=tarfile.USTAR_FORMAT)
            self._name, self._count = name, 0
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        self._tar.close()
        digest = hashlib.sha256((self.out / self._name).read_bytes()).hexdigest()
        self.shards.append({"name": self._name, "samples": self._count, "sha256": digest})
        self._tar = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.shards


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _no_space(out: Path, done: int, inputs: int) -> ShardError:
    """The out-of-disk message: how much this set needs (extrapolated) and how much is free."""
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    needed = written * inputs / max(done, 1)
    free = shutil.disk_usage(out).free + written  # the partial set is removed on the way out
    return ShardError(f"no space left on device for --out: the new set needs about "
                      f"{_mib(needed)} ({_mib(written)} for {done} of {inputs} inputs), "
                      f"{_mib(free)} are free; the old OUT stays until the new one is complete, "
                      f"so both must fit")


def write_set(out: Path, results: Generator[Result, None, None], skipped: list[dict],
              inputs: int, shard_size: int, info: dict) -> dict:
    """Write results (from run_parallel) to shards in order into the new folder `out`; returns
    (and saves) the index."""
    out.mkdir(parents=True)
    writer = ShardWriter(out, shard_size)
    skipped = list(skipped)
    buckets = [0] * len(BUCKETS)
    done = 0
    try:
        with closing(results):  # on an error, too: its progress bar ends before the message
            for done, result in enumerate(results, start=1):
                if result.files is None:
                    skipped.append({"path": result.source, "reason": result.reason})
                    continue
                writer.add(result.key, result.files)
                if result.meta is not None and "bucket" in result.meta:
                    buckets[result.meta["bucket"]] += 1
        shards = writer.close()
        index = {**info, "inputs": inputs, "samples": sum(s["samples"] for s in shards),
                 "shards": shards, "skipped": skipped, "command": shlex.join(sys.argv)}
        if info.get("kind") == "masks":
            index["buckets"] = {bucket_name(i): n for i, n in enumerate(buckets)}
        (out / "index.json").write_text(json.dumps(index, indent=1))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _no_space(out, done, inputs) from None
        raise
    return index


def _foreign(path: Path) -> list[Path]:
    """What under `path` shard.py did not write (its own: shards, index.json, split folders)."""
    if not path.is_dir():
        return [path]
    found = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            found += _foreign(child)
        elif not OWN_FILE.match(child.name):
            found.append(child)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    """(path, pid) of `.OUT.<kind>-PID` siblings whose shard.py process is gone."""
    found = []
    if not out.parent.is_dir():
        return found
    prefix = f".{out.name}.{kind}-"
    for path in out.parent.iterdir():  # not glob: OUT's name may hold [ or *
        if not path.name.startswith(prefix):
            continue
        pid = path.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.append((path, int(pid)))
    return found


def recover_swap(out: Path) -> None:
    """Undo what a shard.py killed mid-swap left (the swap is two renames: OUT -> .OUT.old-PID,
    then .OUT.partial-PID -> OUT). With OUT missing, its old set is moved back; with OUT there,
    the swap had finished and the old set is removed; a killed run's partial set is removed."""
    for old, pid in sorted(_leftovers(out, "old"), key=lambda e: e[0].stat().st_mtime,
                           reverse=True):
        if not (out.exists() or out.is_symlink()):
            os.replace(old, out)
            print(f"shard.py: restored {out} from {old} (its previous set, moved aside by "
                  f"shard.py PID {pid}, which stopped before the new set took its place)",
                  file=sys.stderr)
        else:
            shutil.rmtree(old, ignore_errors=True)
            print(f"shard.py: removed {old} (the set {out} held before shard.py PID {pid} "
                  f"replaced it)", file=sys.stderr)
    for unfinished, pid in _leftovers(out, "partial"):
        shutil.rmtree(unfinished, ignore_errors=True)
        print(f"shard.py: removed {unfinished} (an unfinished set of shard.py PID {pid})",
              file=sys.stderr)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def replaced_when_complete(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling of OUT to write into; it replaces OUT only when the block
    succeeds. On any error or interruption it is removed and OUT is left as it was; only where
    OUT holds no shards, a set without samples still goes in for its index.json (it says why).
    What an earlier run killed mid-swap left is recovered first (recover_swap)."""
    recover_swap(out)
    existed = out.exists() or out.is_symlink()
    if existed:
        foreign = _foreign(out)
        if foreign:
            raise ShardError(f"--out {out} holds files shard.py did not write (e.g. "
                             f"{foreign[0]}); give a new folder or a shard folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    swapped = []

    def swap_in() -> None:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        # a stop signal between the two renames is held until both are done (a SIGKILL there
        # is undone by recover_swap); a handler swap, not a signal mask: the mask would not
        # hold for the other threads (progress bar, pool), which receive it instead
        held: list[int] = []
        handlers = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
                    for sig in STOP_SIGNALS}
        try:
            if existed:
                os.replace(out, old)
            os.replace(staging, out)
            swapped.append(True)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        shutil.rmtree(old, ignore_errors=True)
        if held:
            signal.raise_signal(held[0])

    try:
        try:
            yield staging
            swap_in()
        except NoSamplesError as err:
            if existed and any(out.rglob("shard-*.tar")):
                raise NoSamplesError(f"{err}; {out} is unchanged") from None
            swap_in()
            raise NoSamplesError(f"{err}; {out / 'index.json'} lists them") from None
    except KeyboardInterrupt as err:
        if swapped:  # the signal came during the swap and was held until it was complete
            raise KeyboardInterrupt(err.args[0] if err.args else "Ctrl-C",
                                    f"{out} already holds the new, complete set") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def shard_image_jobs(jobs: list[ImageInput], skipped: list[dict], out: Path, args) -> dict:
    fn = partial(image_sample, size=args.size, fmt=args.format, min_size=args.min_size)
    results = run_parallel(fn, jobs, args.workers, f"images -> {out}")
    info = {"kind": "images", "size": args.size, "format": args.format}
    return write_set(out, results, skipped, len(jobs) + len(skipped), args.shard_size, info)


def report(out: Path, index: dict) -> None:
    print(f"{out}: {index['samples']} samples in {len(index['shards'])} shards, "
          f"{len(index['skipped'])} skipped (of {index['inputs']} inputs)", file=sys.stderr)
    for item in index["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(index["skipped"]) > 10:
        print(f"  ... {len(index['skipped']) - 10} more (index.json lists them)", file=sys.stderr)
    if index["samples"] == 0:
        raise NoSamplesError(f"no samples written to {out}: every input was skipped "
                             f"({index['inputs']} inputs, reasons above)")


def write_summary(out: Path, splits: dict[str, dict]) -> None:
    """OUT/index.json for multi-split commands: per-split totals (shards live in OUT/<split>/)."""
    summary = {"kind": "splits",
               "splits": {name: {"samples": idx["samples"], "inputs": idx["inputs"],
                                 "skipped": len(idx["skipped"])} for name, idx in splits.items()},
               "samples": sum(idx["samples"] for idx in splits.values()),
               "skipped": [item for idx in splits.values() for item in idx["skipped"]],
               "command": shlex.join(sys.argv)}
    (out / "index.json").write_text(json.dumps(summary, indent=1))


def finish_splits(out: Path, staging: Path, indexes: dict[str, dict]) -> None:
    """Summary index into the staging folder, then each split's report (under OUT's name)."""
    write_summary(staging, indexes)
    for name, index in indexes.items():
        report(out / name, index)


# ---------------------------------------------------------------------------- commands

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


def _first_dir(root: Path, names: Sequence[str]) -> Optional[Path]:
    return next((root / n for n in names if (root / n).is_dir()), None)


def paris_splits(root: Path) -> dict[str, tuple[list[ImageInput], list[dict]]]:
    train, test = _first_dir(root, PARIS_TRAIN_DIRS), _first_dir(root, PARIS_TEST_DIRS)
    if train is None or test is None:
        raise ShardError(f"{root} is not a Paris StreetView folder: expected a train folder "
                         f"({' or '.join(PARIS_TRAIN_DIRS)}) and an eval folder "
                         f"({' or '.join(PARIS_TEST_DIRS)})")
    return {"train": find_inputs([str(train)], IMAGE_EXTS),
            "test": find_inputs([str(test)], IMAGE_EXTS)}


def celeba_splits(root: Path) -> dict[str, tuple[list[ImageInput], list[dict]]]:
    folder = _first_dir(root, CELEBA_DIRS) or root
    jobs, skipped = find_inputs([str(folder)], IMAGE_EXTS)
    splits = {"train": ([], []), "test": ([], [])}
    for job in jobs:
        stem = Path(job.source).stem
        if not stem.isdigit() or job.key.count("/"):
            skipped.append({"path": job.source,
                            "reason": "not a CelebA-HQ image name (<id>.jpg, 0..29999)"})
            continue
        split = "train" if int(stem) < CELEBA_TRAIN else "test"
        splits[split][0].append(job)
    splits["train"][1].extend(skipped)  # outside both splits: recorded once, under train
    return splits


def cmd_dataset(args) -> None:
    root, out = Path(args.root), Path(args.out)
    if not root.is_dir():
        raise ShardError(f"--root {root}: not a directory")
    splits = paris_splits(root) if args.name == "paris" else celeba_splits(root)
    with replaced_when_complete(out) as staging:
        indexes = {name: shard_image_jobs(jobs, skipped, staging / name, args)
                   for name, (jobs, skipped) in splits.items()}
        finish_splits(out, staging, indexes)


def bundled_photos() -> dict[str, np.ndarray]:
    """Real photos shipped inside installed wheels (no download)."""
    from matplotlib import cbook
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    left, right, _disparity = data.stereo_motorcycle()
    photos.update(motorcycle_left=left, motorcycle_right=right)
    sample = load_sample_images()
    photos.update({Path(f).stem: img for f, img in zip(sample.filenames, sample.images)})
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    return photos


def photo_crops(name: str, photo: np.ndarray, crops: int) -> list[ImageInput]:
    """The centre square plus random squares of 55-90 % of the short side, as BMP bytes."""
    rng = np.random.default_rng(list(name.encode()))  # fixed per photo, independent of order
    h, w = photo.shape[:2]
    jobs = []
    for i in range(crops):
        side = min(h, w) if i == 0 else int(min(h, w) * rng.uniform(0.55, 0.9))
        top = (h - side) // 2 if i == 0 else int(rng.integers(0, h - side + 1))
        left = (w - side) // 2 if i == 0 else int(rng.integers(0, w - side + 1))
        buf = io.BytesIO()
        Image.fromarray(photo[top:top + side, left:left + side]).save(buf, format="BMP")
        label = f"bundled:{name} crop x={left} y={top} side={side}"
        jobs.append(ImageInput(f"{name}_{i:02d}", label, data=buf.getvalue()))
    return jobs


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


# ---------------------------------------------------------------------------- CLI

def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, shard_size: int = 1000) -> None:
        p.add_argument("--out", required=True, help="output folder (shards + index.json)")
        p.add_argument("--size", type=_positive, default=256, help="square side in px (256)")
        p.add_argument("--shard-size", type=_positive, default=shard_size,
                       help="samples per tar shard")
        p.add_argument("--workers", type=_positive, default=usable_cores(),
                       help="worker processes (default: the cores this process may use)")

    def image_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("jpg", "png"), default="jpg",
                       help=f"image encoding in the shards (jpg: quality {JPEG_QUALITY}, 4:4:4)")
        p.add_argument("--min-size", type=int, default=0,
                       help="skip images whose short side is below this (default: upscale all)")

    p = sub.add_parser("images", help="folders of images -> image+edge shards")
    p.add_argument("src", nargs="+", help="image folders (searched recursively) or files")
    common(p)
    image_options(p)
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("masks", help="mask images, or generated masks -> bucketed mask shards")
    p.add_argument("src", nargs="*", help="folders of mask images (white = hole)")
    p.add_argument("--invert", action="store_true", help="masks use black = hole")
    p.add_argument("--generate", type=int, metavar="N",
                   help="generate N free-form masks instead (N a multiple of 6)")
    p.add_argument("--seed", type=int, default=0, help="seed for --generate")
    p.add_argument("--boxes", action="store_true", help="--generate: mix in rectangles")
    common(p)
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("dataset", help="a published dataset folder -> OUT/train and OUT/test")
    p.add_argument("name", choices=("paris", "celeba-hq"))
    p.add_argument("--root", required=True, help="the dataset's folder as downloaded")
    common(p)
    image_options(p)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("sample", help="bundled photos -> OUT/train, OUT/test, OUT/masks")
    common(p, shard_size=20)
    image_options(p)
    p.add_argument("--crops", type=_positive, default=5, help="crops per photo (5)")
    p.add_argument("--masks", type=_positive, default=96, help="generated masks (96)")
    p.add_argument("--seed", type=int, default=0, help="seed for the generated masks")
    p.set_defaults(func=cmd_sample)
    return parser


def _stop(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so the staging folder is removed and OUT stays as it was;
    # a second signal while that happens exits at once (the next run removes what is left)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_now)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_now(signum, frame) -> None:
    print(f"shard.py: second signal ({signal.Signals(signum).name}): exiting at once; OUT is as "
          f"it was (the next run removes any partial set left beside it)", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    try:
        args.func(args)
    except ShardError as err:
        exit_codes.refuse(f"shard.py {args.command}: error: {err}")
    except OSError as err:
        exit_codes.refuse(f"shard.py {args.command}: error: {err.strerror or err}: {err.filename}")
    except KeyboardInterrupt as err:
        where = err.args[1] if len(err.args) > 1 else f"{args.out} is unchanged"
        for sig in STOP_SIGNALS:  # all is tidied: a further press must not turn rc into -2
            signal.signal(sig, signal.SIG_IGN)
        print(f"shard.py {args.command}: interrupted ({err.args[0] if err.args else 'Ctrl-C'}); "
              f"{where}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
