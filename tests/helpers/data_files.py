"""Data test helpers: real image/mask files of every awkward kind, and a shard.py runner."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import REPO, run_cli

SHARD = [sys.executable, str(REPO / "pipeline" / "shard.py")]


def run_shard(*args, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("shard.py", *args, check=check, timeout=120)


def read_index(folder: Path) -> dict:
    return json.loads((Path(folder) / "index.json").read_text())


def photo(size: int = 48, seed: int = 0) -> np.ndarray:
    """A small RGB test picture with structure (gradient plus a few rectangles)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)
    for _ in range(3):
        a, b = sorted(rng.integers(0, size, 2))
        c, d = sorted(rng.integers(0, size, 2))
        img[a:b + 1, c:d + 1] = rng.integers(0, 256, 3)
    return img


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height but holds almost no pixel data: a decompression bomb
    in a few bytes (Pillow checks the pixel count when opening, before decoding)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    path.write_bytes(data)
    return path


def exif_rotated(path: Path) -> Path:
    """Stored 40x20 (left half red, right half blue) with EXIF orientation 6 (rotate 90 CW):
    displayed 20 wide x 40 tall with red on top."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # EXIF orientation
    return save(path, img, format="JPEG", quality=95, exif=exif.tobytes())


def make_image_zoo(root: Path) -> dict[str, str]:
    """One file of each kind under root; returns {relative path: expected outcome}.

    Outcome "ok" means a sample; anything else is a substring of the skip reason.
    """
    rgb = photo(48)
    expected = {}

    def add(rel: str, outcome: str) -> Path:
        expected[rel] = outcome
        return root / rel

    save(add("good.jpg", "ok"), Image.fromarray(rgb), quality=90)
    save(add("sub/deeper/good2.png", "ok"), Image.fromarray(photo(48, 1)))
    save(add("cmyk.jpg", "ok"), Image.fromarray(rgb).convert("CMYK"))
    sixteen = (np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)
    save(add("gray16.png", "ok"), Image.fromarray(sixteen))
    save(add("gray.png", "ok"), Image.fromarray(rgb).convert("L"))
    save(add("palette.png", "ok"), Image.fromarray(rgb).convert("P"))
    alpha = np.dstack([rgb, np.full((48, 48), 128, np.uint8)])
    save(add("alpha.png", "ok"), Image.fromarray(alpha, "RGBA"))
    save(add("gray_alpha.png", "ok"), Image.fromarray(alpha, "RGBA").convert("LA"))
    save(add("webp.webp", "ok"), Image.fromarray(rgb))
    save(add("bitmap.BMP", "ok"), Image.fromarray(rgb), format="BMP")
    save(add("tiff.tif", "ok"), Image.fromarray(rgb))
    exif_rotated(add("rotated.jpg", "ok"))
    save(add("tiny.png", "ok"), Image.fromarray(photo(8)))  # upscaled
    add("text.jpg", "not an image").write_text("this is not a picture")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    add("truncated.jpg", "truncated").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    png_header_only(add("bomb.png", "decompression bomb"), 40000, 40000)  # > 2x the limit
    png_header_only(add("bomb_warning.png", "decompression bomb"), 10000, 10000)  # > 1x
    add("notes.txt", "not an image file extension").write_text("hello")
    add("empty.png", "not an image").write_bytes(b"")
    (root / "missing_target.jpg").symlink_to(root / "does_not_exist.jpg")
    expected["missing_target.jpg"] = "unreadable"
    (root / "empty_subfolder").mkdir()
    return expected


def write_masks(root: Path) -> dict[str, str]:
    """Mask files of each awkward kind; {name: expected bucket name or skip-reason substring}."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    half = np.zeros((64, 64), np.uint8)
    half[:, :16] = 255  # 25 %
    Image.fromarray(half).save(root / "quarter.png")
    expected["quarter.png"] = "20-30"
    soft = half.astype(np.float32) * 0.6 + 40  # non-binary: 193 (hole) vs 40 (known)
    soft[:, 16:24] = 120  # below 0.5: known
    Image.fromarray(soft.astype(np.uint8)).save(root / "soft.png")
    expected["soft.png"] = "20-30"
    big = np.zeros((128, 128), np.uint8)
    big[:, :16] = 255  # 12.5 % at any size (nearest resize of whole columns)
    Image.fromarray(big).convert("RGB").save(root / "big_rgb.png")
    expected["big_rgb.png"] = "10-20"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "empty.png")
    expected["empty.png"] = "all-empty"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "full.png")
    expected["full.png"] = "all-hole"
    most = np.full((64, 64), 255, np.uint8)
    most[:8] = 0  # 87.5 % hole
    Image.fromarray(most).save(root / "most.png")
    expected["most.png"] = "above 60 %"
    (root / "broken.png").write_text("not a mask")
    expected["broken.png"] = "not an image"
    png_header_only(root / "bomb.png", 40000, 40000)
    expected["bomb.png"] = "decompression bomb"
    (root / "truncated.png").write_bytes((root / "quarter.png").read_bytes()[:60])
    expected["truncated.png"] = "truncated"
    return expected


def photo_files(folder: Path, count: int, size: int, prefix: str = "p") -> Path:
    """`count` distinct photo() images as PNG files <prefix>NNN.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(photo(size, seed=i)).save(folder / f"{prefix}{i:03d}.png")
    return folder
