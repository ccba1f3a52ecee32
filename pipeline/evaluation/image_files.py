"""A user's image and mask files for inpainting: read at full resolution (a mask must be binary
and of the image's size), and the result written where asked, known pixels bit-exact in a
lossless format.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.images import ImageError, decode_rgb, open_image
from pipeline.data.masks import mask_levels

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
