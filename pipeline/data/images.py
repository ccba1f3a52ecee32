"""Find image files, decode any of them into a square RGB uint8 array, and compute its edge map.

Everything that can be wrong with a file (not an image, truncated, a decompression bomb, an odd
pixel format) surfaces as `ImageError(reason)`, so callers can record the reason and go on.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage.feature import canny

Source = Union[str, Path, BinaryIO, bytes]

# skimage.color.rgb2gray's weights (what EdgeConnect uses before Canny); data.py uses the same
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
EXIF_ORIENTATION = 0x0112
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An input that cannot become a training image; str(err) is the reason."""


@dataclass(frozen=True)
class ImageInput:
    """One input: a file on disk, or encoded bytes with a descriptive source label."""
    key: str
    source: str
    data: Optional[bytes] = None


# ---------------------------------------------------------------------------- finding inputs

def natural_key(text: str) -> list:
    """Sort "img2" before "img10" (CelebA-HQ's 0.jpg .. 29999.jpg need numeric order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def make_key(relative: str) -> str:
    """Stable WebDataset key from a relative path: no dots (WebDataset splits on the first)."""
    return re.sub(r"[^A-Za-z0-9_\-/]", "_", relative).strip("/")


def _unique(key: str, used: set[str]) -> str:
    """`key`, or key-2, key-3 ...: distinct inputs whose names map to one key all keep a key."""
    candidate, n = key, 1
    while candidate in used:
        n += 1
        candidate = f"{key}-{n}"
    used.add(candidate)
    return candidate


def _walk(root: Path, visited: set[str], skipped: list[dict]) -> list[tuple[Path, str]]:
    """(file, path relative to root) below root, following symlinked folders once each:
    a folder reached a second time (a link loop, or two links to one folder) is skipped."""
    found = []

    def on_error(err: OSError) -> None:
        skipped.append({"path": err.filename, "reason": f"unreadable: {err.strerror}"})

    for dirpath, dirs, files in os.walk(root, onerror=on_error, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        for name in sorted(dirs):
            path = Path(dirpath) / name
            if os.path.realpath(path) in visited:
                dirs.remove(name)
                skipped.append({"path": str(path), "reason": "folder already read (a symlink "
                                f"to {os.path.realpath(path)}, or reached through one)"})
            else:
                visited.add(os.path.realpath(path))
        for name in files:
            path = Path(dirpath) / name
            found.append((path, path.relative_to(root).as_posix()))
    return found


def find_inputs(sources: Sequence[str], exts: Sequence[str]
                ) -> tuple[list[ImageInput], list[dict]]:
    """Walk sources recursively. Every entry found is an input or a skipped {path, reason}."""
    inputs: list[ImageInput] = []
    skipped: list[dict] = []
    used: set[str] = set()
    visited: set[str] = set()
    prefix_keys = len(sources) > 1
    for src in sources:
        root = Path(src)
        if not root.exists() and not root.is_symlink():
            skipped.append({"path": src, "reason": "does not exist"})
            continue
        if not root.is_dir():
            found = [(root, root.name)]
        elif os.path.realpath(root) in visited:
            skipped.append({"path": src, "reason": "folder already read"})
            continue
        else:
            found = _walk(root, visited, skipped)
        for path, rel in sorted(found, key=lambda item: natural_key(item[1])):
            if path.suffix.lower() not in exts:
                skipped.append({"path": str(path),
                                "reason": f"not an image file extension ({path.suffix or 'none'})"})
                continue
            key = _unique(make_key(f"{root.name}/{rel}" if prefix_keys else rel), used)
            inputs.append(ImageInput(key, str(path)))
    return inputs, skipped


# ---------------------------------------------------------------------------- decoding

def open_image(source: Source, draft_size: Optional[int] = None) -> Image.Image:
    """Image.open + load, with every failure turned into ImageError(reason).

    draft_size: let JPEGs decode at a reduced DCT scale that still leaves both sides >= it
    (several times faster for large photos). `img.info["header_size"]` keeps the stored size.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    # A bomb warning (between 1x and 2x Image.MAX_IMAGE_PIXELS) is as fatal as the error.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
            img.info["header_size"] = img.size
            if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
                img.draft(img.mode, (draft_size, draft_size))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise ImageError("not an image (no decoder recognises the file)") from None
        except FileNotFoundError as err:
            raise ImageError(f"unreadable: {err.strerror}: {err.filename}") from None
        except PermissionError as err:
            raise ImageError(f"unreadable: permission denied: {err.filename}") from None
        except IsADirectoryError as err:
            raise ImageError(f"unreadable: is a directory: {err.filename}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            # Pillow reports truncated/corrupt data as OSError ("image file is truncated", ...)
            raise ImageError(f"corrupt or truncated image: {err}") from None
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8, alpha composited over white."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16/32-bit grayscale: Pillow's convert("L") clips instead of scaling
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr, 0, 65535) / 257.0
        gray = np.round(arr).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        gray = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"))


def center_square(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return arr[top:top + side, left:left + side]


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Square HxWx3 uint8 -> size x size (Lanczos both ways)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))


def decode_rgb(source: Source, draft_size: Optional[int] = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode, apply EXIF orientation, convert to RGB: (HxWx3 uint8, original (width, height)).

    With draft_size, large JPEGs may decode at a reduced scale (see open_image)."""
    img = open_image(source, draft_size=draft_size)
    width, height = img.info["header_size"]
    try:
        if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # quarter turns
            width, height = height, width
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"cannot convert pixels (mode {img.mode}): {err}") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError(f"empty image ({width}x{height})")
    return rgb, (width, height)


def read_image(source: Source, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """load_image plus the original (width, height) after EXIF orientation."""
    rgb, original = decode_rgb(source, draft_size=size)
    return resize_rgb(center_square(rgb), size), original


def load_image(source: Source, size: int) -> np.ndarray:
    """Decode, apply EXIF orientation, convert to RGB, centre-crop, resize -> size x size x 3."""
    return read_image(source, size)[0]


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float32 in [0, 1], skimage's rgb2gray weights."""
    return (rgb.astype(np.float32) / 255.0) @ np.asarray(GRAY_WEIGHTS, dtype=np.float32)


def canny_edges(rgb: np.ndarray, sigma: float = 2.0,
                known: Optional[np.ndarray] = None) -> np.ndarray:
    """Edge map as EdgeConnect computes it: Canny(sigma) of the grayscale image, uint8 {0, 255}.

    `known` (HxW bool) restricts it to the known region, as at test time, so no hole pixel
    reaches the edges through the smoothing."""
    return canny(to_gray(rgb), sigma=sigma, mask=known).astype(np.uint8) * 255
