"""Inpaint one image of any size with a trained checkpoint.

    python pipeline/inpaint.py --checkpoint CKPT_DIR --image IMG --mask MASK --out OUT.png

How any size is handled: the networks were trained on square images of one size (the
checkpoint's data.image_size), so the image is reflect-padded to a square (keeping its aspect
ratio), resized to that size, inpainted (G1 edges -> G2), and the prediction is resized back to
full resolution. Only the hole pixels are replaced: every known pixel of the output is the input's
own pixel, bit for bit. The model sees a hole that covers every full-resolution hole pixel (a
low-resolution pixel is a hole if any pixel under it is), so no hole content leaks into the input.
Fine detail inside large holes is therefore limited by the model's resolution.

The mask must have the image's size, white = hole (>= 128 after greyscale conversion; a mask
stored as 0/1 values reads 1 as white); --invert-mask for black holes.

Nearly binary masks (JPEG ringing) are accepted: values are thresholded at 128 as long as at most
1 % of the pixels lie between 32 and 223; anything greyer is refused as not a mask.

Output formats: --out's extension picks one. PNG, BMP, TIFF, PPM and WebP (written lossless) keep
every known pixel bit-exact. JPEG cannot: it changes known pixels too (by tens of levels near
edges), so .jpg/.jpeg is refused unless --allow-lossy is given, and then the report says so.
--out is checked (extension, a writable folder) before the model runs, and written under a
temporary name then renamed, so a failed run leaves an existing file as it was.
"""
from __future__ import annotations

import argparse
import sys
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from pipeline import exit_codes
from pipeline.inference import InferenceError, load_model, model_fill
from pipeline.images import ImageError, decode_rgb, open_image, to_gray
from pipeline.masks import mask_levels
from pipeline.metrics import to_uint8
from pipeline.model_source import ModelSourceError, local_checkpoint
from pipeline.tracking import default_uri

GREY_LOW, GREY_HIGH = 32, 223  # a mask pixel outside [0, 32) and (223, 255] is "grey"
MAX_GREY_FRACTION = 0.01
# extension -> (Pillow format, save options); every one stores RGB uint8 exactly
LOSSLESS = {".png": ("PNG", {}), ".bmp": ("BMP", {}), ".tif": ("TIFF", {}),
            ".tiff": ("TIFF", {}), ".ppm": ("PPM", {}), ".webp": ("WEBP", {"lossless": True})}
LOSSY = {".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
         ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0})}


class InpaintError(ValueError):
    """A bad input; the message names it."""


def _decoded(path: str, what: str, decode):
    """decode(path), with a missing or unreadable file as an InpaintError naming it."""
    if not Path(path).is_file():
        raise InpaintError(f"{what} file not found: {path}")
    try:
        return decode(path)
    except ImageError as err:
        raise InpaintError(f"{what} {path} is not a readable image: {err}") from None


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 at full resolution (EXIF orientation applied, alpha over white)."""
    return _decoded(path, "image", lambda p: decode_rgb(p)[0])


def read_mask(path: str, size_wh: tuple[int, int], invert: bool) -> np.ndarray:
    """HxW bool, True = hole; refuses a size mismatch and non-binary masks (see module doc)."""
    img = _decoded(path, "mask", lambda p: ImageOps.exif_transpose(open_image(p)))
    if img.size != size_wh:
        raise InpaintError(f"mask {path} is {img.size[0]}x{img.size[1]} but the image is "
                           f"{size_wh[0]}x{size_wh[1]}; they must match")
    grey = mask_levels(img) * 255
    fraction = np.mean((grey >= GREY_LOW) & (grey <= GREY_HIGH))
    if fraction > MAX_GREY_FRACTION:
        raise InpaintError(f"mask {path} is not binary: {100 * fraction:.1f} % of its pixels are "
                           f"grey (between {GREY_LOW} and {GREY_HIGH}); use a black/white mask, "
                           f"white = hole")
    hole = grey >= 128
    return ~hole if invert else hole


def output_format(out: str, allow_lossy: bool) -> tuple[str, dict]:
    """(Pillow format, save options) for --out, after checking its extension and folder."""
    path = Path(out)
    ext = path.suffix.lower()
    if path.is_dir():
        raise InpaintError(f"--out {out} is a directory; give a file name")
    if ext in LOSSY and not allow_lossy:
        raise InpaintError(f"--out {out}: JPEG would change the known pixels too; use .png "
                           f"(lossless), or pass --allow-lossy to accept that")
    if ext not in LOSSLESS and ext not in LOSSY:
        named = f"extension '{ext}'" if ext else "no extension"
        raise InpaintError(f"--out {out}: {named}; use one of "
                           f"{', '.join(sorted(LOSSLESS))} (lossless) or .jpg with --allow-lossy")
    folder = path.parent
    while not folder.exists():  # the nearest existing folder is where the new ones would go
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a directory")
        with tempfile.TemporaryFile(dir=folder):
            pass  # a real probe: permission bits say nothing for root or read-only mounts
    except OSError as err:
        raise InpaintError(f"--out {out}: cannot write into {folder}: "
                           f"{err.strerror or err}") from None
    return LOSSLESS.get(ext) or LOSSY[ext]


def write_output(out: str, rgb: np.ndarray, fmt: tuple[str, dict]) -> None:
    """Write under a temporary sibling name, then rename over --out."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        Image.fromarray(rgb).save(part, format=fmt[0], **fmt[1])
        os.replace(part, path)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise InpaintError(f"--out {out}: cannot write: {err.strerror or err}") from None
    except BaseException:  # Ctrl-C mid-write: no half-written .part file left behind
        part.unlink(missing_ok=True)
        raise


def pad_to_square(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad [B,C,H,W] to a square (centred); returns it and the (top, left) offsets."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = (left, side - w - left, top, side - h - top)
    # reflection needs the pad to be shorter than the side; replicate covers thin strips
    mode = "reflect" if max(pad) < min(h, w) else "replicate"
    return F.pad(x, pad, mode=mode), (top, left)


def inpaint_image(rgb: np.ndarray, hole: np.ndarray, g1, g2, size: int, device: str
                  ) -> tuple[np.ndarray, dict]:
    """Full-resolution output (known pixels untouched) and a record of what was done."""
    h, w = hole.shape
    # a copy: a decoded image's array is read-only, which torch warns about
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255)
    mask = torch.from_numpy(hole)[None, None].float()
    square, (top, left) = pad_to_square(torch.cat([image, mask], dim=1))
    side = square.shape[-1]
    small_image = F.interpolate(square[:, :3], size=(size, size), mode="bicubic",
                                antialias=True, align_corners=False).clamp(0, 1)
    # the padding is known context; any hole pixel under a low-resolution pixel makes it a hole
    small_mask = (F.adaptive_max_pool2d(square[:, 3:], size) if side >= size else
                  F.interpolate(square[:, 3:], size=(size, size), mode="nearest"))
    if bool(small_mask.min() > 0):  # the same black output as an all-hole mask
        raise InpaintError(f"at the model's {size}x{size} every pixel touches the hole: no "
                           f"known pixel is left to inpaint from")
    small_image = to_uint8(small_image).float().div(255)  # what a saved size x size image holds
    gray = torch.from_numpy(to_gray(to_uint8(small_image)[0].permute(1, 2, 0).numpy()))
    batch = {"image": small_image, "mask": small_mask, "gray": gray[None, None],
             "edge": torch.zeros_like(small_mask)}
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        pred = model_fill(g1, g2)(batch).cpu()
    full = F.interpolate(pred, size=(side, side), mode="bicubic", align_corners=False)
    full = to_uint8(full[..., top:top + h, left:left + w])[0].permute(1, 2, 0).numpy()
    out = np.where(hole[..., None], full, rgb)
    return out, {"square": side, "model_size": size, "hole_pixels": int(hole.sum())}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Inpaint one image of any size with a trained checkpoint.",
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint dir, a run output dir (its latest checkpoint), or an MLflow "
                        "model URI (runs:/RUN_ID, models:/MODEL_ID, models:/NAME/VERSION; "
                        "server from $MLFLOW_TRACKING_URI)")
    p.add_argument("--edge-checkpoint", help="take G1 from this checkpoint instead")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw trained weights; by default a checkpoint's EMA weights "
                        "(train.ema) are used where it holds them")
    p.add_argument("--image", required=True, help="image file, any size")
    p.add_argument("--mask", required=True, help="mask file of the same size, white = hole")
    p.add_argument("--invert-mask", action="store_true", help="black = hole")
    p.add_argument("--out", required=True,
                   help="output image; .png/.bmp/.tif/.ppm/.webp keep known pixels bit-exact")
    p.add_argument("--allow-lossy", action="store_true",
                   help="allow a .jpg/.jpeg --out (known pixels then change too)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        fmt = output_format(args.out, args.allow_lossy)
        rgb = read_rgb(args.image)
        hole = read_mask(args.mask, (rgb.shape[1], rgb.shape[0]), args.invert_mask)
        if not hole.any():
            raise InpaintError(f"mask {args.mask} has no hole pixels (white = hole; "
                               f"--invert-mask if the holes are black)")
        if hole.all():
            raise InpaintError(f"mask {args.mask} is all hole: no known pixel to inpaint from "
                               f"(white = hole; --invert-mask if the holes are black)")
        checkpoint = local_checkpoint(args.checkpoint, default_uri())
        g1, g2, info = load_model(checkpoint, args.edge_checkpoint, args.device,
                                  args.raw_weights)
        size = int(info["cfg"].data.image_size)
        out, done = inpaint_image(rgb, hole, g1, g2, size, args.device)
        write_output(args.out, out, fmt)
    except (InpaintError, InferenceError, ModelSourceError) as err:
        exit_codes.refuse(f"inpaint.py: error: {err}")
    h, w = hole.shape
    ratio = done["hole_pixels"] / hole.size
    steps = [f"image {w}x{h}, hole {100 * ratio:.1f} % ({done['hole_pixels']} pixels)"]
    if ratio > 0.6:
        steps.append("note: the model was trained on holes up to 60 %")
    if (h, w) != (size, size):
        padded = f"reflect-padded to {done['square']}x{done['square']}, " if h != w else ""
        steps.append(f"{padded}resized to {size}x{size} for the model, prediction resized back")
    exact = ("known pixels unchanged" if fmt[0] != "JPEG" else
             "known pixels are NOT bit-exact: JPEG changed them too (--allow-lossy)")
    weights = ("EMA weights" if info["weights"] == "ema" else
               "raw weights" + (" (--raw-weights)" if args.raw_weights else
                                " (the checkpoint holds no EMA)"))
    steps.append(f"G1 -> G2 from {info['path']} (step {info['meta'].get('step')}, {weights}) "
                 f"on {args.device}; only hole pixels replaced, {exact}")
    print("; ".join(steps) + f"\nwrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("inpaint.py: interrupted (Ctrl-C); "
              "--out is as it was (written only when complete)", file=sys.stderr)
        sys.exit(130)
