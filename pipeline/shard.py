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
import signal
import sys
from typing import Optional, Sequence

from pipeline import exit_codes
from pipeline.data.cores import usable_cores
from pipeline.data.samples import JPEG_QUALITY
from pipeline.data.shard_commands import cmd_dataset, cmd_images, cmd_masks, cmd_sample
from pipeline.data.shard_writer import ShardError
from pipeline.stop_signals import STOP_SIGNALS, unwind_on_stop_signals


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


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    # a stop unwinds like Ctrl-C, so the staging folder is removed and OUT stays as it was
    unwind_on_stop_signals(f"shard.py {args.command}", "OUT is as it was (the next run removes "
                                                        "any partial set left beside it)")
    try:
        args.func(args)
    except ShardError as err:
        exit_codes.refuse(f"shard.py {args.command}: error: {err}")
    except OSError as err:
        exit_codes.refuse(f"shard.py {args.command}: error: {err.strerror or err}: {err.filename}")
    except KeyboardInterrupt as err:
        where = err.args[1] if len(err.args) > 1 else f"{args.out} is unchanged"
        for sig in STOP_SIGNALS:  # all is tidied: a further press must not change the status
            signal.signal(sig, signal.SIG_IGN)
        print(f"shard.py {args.command}: interrupted ({err.args[0] if err.args else 'Ctrl-C'}); "
              f"{where}", file=sys.stderr)
        sys.exit(exit_codes.INTERRUPTED)


if __name__ == "__main__":
    main()
