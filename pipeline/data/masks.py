"""Inpainting masks: hole-area buckets, a free-form mask generator, and mask file loading.

Convention everywhere: uint8 HxW, 1 = hole (missing pixels), 0 = known.
"""
from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.images import ImageError, Source, center_square, open_image

# mask pixels between these levels are grey (the levels of evaluation/image_files.py's check, 32
# and 223 of 255); a file with more than MASK_MAX_GREY of them spread over many levels is a photo
MASK_GREY_LOW, MASK_GREY_HIGH, MASK_MAX_GREY = 32 / 255, 223 / 255, 0.01
MASK_LEVELS = 8  # a soft mask keeps at least half its grey pixels on this many levels
# a mask saved in colour keeps its channels equal up to JPEG noise; a pixel whose channels differ
# by more than this is coloured, and more than MASK_MAX_GREY of them make a picture (a plot, say)
MASK_COLOUR_SPREAD = 64

# The paper's hole-area groups; bucket i holds ratios in (lo, hi].
BUCKETS = [(i / 10, (i + 1) / 10) for i in range(6)]


def bucket_name(index: int) -> str:
    lo, hi = BUCKETS[index]
    return f"{round(lo * 100)}-{round(hi * 100)}"


def bucket_of(hole_ratio: float) -> Optional[int]:
    """Bucket index for a hole ratio; None for no hole at all or more than 60 % hole."""
    for index, (lo, hi) in enumerate(BUCKETS):
        if lo < hole_ratio <= hi:
            return index
    return None


def hole_ratio(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size


def mask_levels(img: Image.Image) -> np.ndarray:
    """A mask image's pixels as HxW float64 in [0, 1], 1 = white.

    Full scale is read off the values: 16-bit masks use 0..65535, most use 0..255, and a mask
    whose largest value is 1 was stored as 0/1 (a common way to save a label map)."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
    else:
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    peak = arr.max(initial=0.0)
    full = 65535.0 if peak > 255 else 255.0 if peak > 1 else 1.0
    return arr / full


def _photo_like(levels: np.ndarray) -> str:
    """Why the levels are a photo's rather than a mask's, or "" for a mask. A mask may be soft
    (a few grey levels, binarised at 0.5) or carry JPEG ringing or anti-aliased edges (grey on
    few pixels); a photo spreads many pixels over many grey levels."""
    band = levels[(levels >= MASK_GREY_LOW) & (levels <= MASK_GREY_HIGH)]
    if band.size <= MASK_MAX_GREY * levels.size:
        return ""
    counts = np.bincount(np.round(band * 255).astype(np.int64).ravel(), minlength=256)
    if np.sort(counts)[-MASK_LEVELS:].sum() >= 0.5 * band.size:
        return ""  # its grey sits on a few levels: a soft mask
    return (f"{100 * band.size / levels.size:.1f} % of its pixels are grey, spread over "
            f"{np.count_nonzero(counts)} levels")


def _coloured(img: Image.Image) -> str:
    """Why the image is a colour picture rather than a mask, or "" for one without colour."""
    if Image.getmodebase(img.mode) == "L":
        return ""  # grey by construction
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    share = np.mean(np.ptp(rgb, axis=-1) > MASK_COLOUR_SPREAD)
    return f"{100 * share:.1f} % of its pixels are coloured" if share > MASK_MAX_GREY else ""


def load_mask(source: Source, size: int, invert: bool = False) -> np.ndarray:
    """Mask file (white = hole) -> size x size uint8 {0,1}: binarised at 0.5, nearest resize.

    Non-square masks are centre-cropped like the images they are paired with. Bad files raise
    ImageError(reason), as images do.
    """
    img = open_image(source)
    levels = mask_levels(img)
    spread = _coloured(img) or _photo_like(levels)
    if spread:
        raise ImageError(f"not a mask: {spread}; a mask is black and white (white = hole)")
    hole = levels >= 0.5
    if invert:
        hole = ~hole
    return resize_mask(center_square(hole).astype(np.uint8), size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A square HxW {0,1} mask at size x size (nearest neighbour: it stays binary)."""
    if mask.shape[0] == size:
        return mask
    resized = Image.fromarray(mask * 255).resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(resized) >= 128).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> bytes:
    """{0,1} mask -> a 0/255 grayscale PNG (white = hole, viewable as is)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A 0/255 PNG as encode_mask writes it (a mask, or an edge map) -> HxW uint8 {0,1}; decoded
    as one channel on purpose (a generic decode gives RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        return (np.asarray(img.convert("L")) >= 128).astype(np.uint8)


class _Brush:
    """A brush that paints a free-form stroke step by step and never overshoots a pixel cap."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size = rng, size
        self.canvas = Image.new("L", (size, size), 0)
        self.count = 0
        self.pixel_mode = False
        self._new_stroke()

    def _new_stroke(self) -> None:
        s = self.size
        self.x, self.y = self.rng.uniform(0, s, size=2)
        self.angle = self.rng.uniform(0, 2 * math.pi)
        self.width = self.rng.uniform(s / 40, s / 10) + 1.0
        self.vertices_left = int(self.rng.integers(4, 13))
        self.segment_left = self._segment_length()

    def _segment_length(self) -> float:
        return self.rng.uniform(self.size / 16, self.size / 4)

    def _turn(self) -> None:
        self.vertices_left -= 1
        if self.vertices_left <= 0:
            self._new_stroke()
            return
        self.angle += self.rng.normal(0.0, 0.8) + (math.pi if self.rng.random() < 0.15 else 0.0)
        self.segment_left = self._segment_length()

    def paint_box(self, cap: int) -> None:
        """A rectangle of at most `cap` pixels (cap = pixels still allowed)."""
        area = self.rng.uniform(0.3, 1.0) * min(cap, 0.12 * self.size ** 2)
        aspect = math.exp(self.rng.uniform(-1.0, 1.0))
        w = max(1, int(math.sqrt(area * aspect)))
        h = max(1, int(area / w))
        left = int(self.rng.integers(0, max(1, self.size - w + 1)))
        top = int(self.rng.integers(0, max(1, self.size - h + 1)))
        self._commit(lambda d: d.rectangle([left, top, left + w - 1, top + h - 1], fill=255), cap)

    def paint_step(self, need: int, cap: int) -> None:
        """Advance the stroke by a step sized to add about `need` pixels, at most `cap`."""
        width = min(self.width, max(1.0, math.sqrt(cap)))
        length = min(self.segment_left, max(1.0, need / width))
        nx = self.x + length * math.cos(self.angle)
        ny = self.y + length * math.sin(self.angle)
        if not (0 <= nx < self.size and 0 <= ny < self.size):
            self.angle += math.pi / 2 + self.rng.uniform(0, math.pi)  # bounce off the border
            nx = min(max(nx, 0.0), self.size - 1.0)
            ny = min(max(ny, 0.0), self.size - 1.0)
        x0, y0, r = self.x, self.y, width / 2

        def draw(d: ImageDraw.ImageDraw) -> None:
            if self.pixel_mode:  # the finest brush still overshot: one pixel per step never can
                d.point((round(nx), round(ny)), fill=255)
                return
            d.line([(x0, y0), (nx, ny)], fill=255, width=max(1, round(width)))
            d.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)

        if self._commit(draw, cap):
            self.x, self.y = nx, ny
            self.segment_left -= length
            if self.segment_left <= 0.5:
                self._turn()
        elif self.width > 1.0:
            self.width = max(1.0, self.width / 2)  # too big for what is left: finer brush
        else:
            self.pixel_mode = True

    def _commit(self, draw, cap: int) -> bool:
        before = self.canvas.copy()
        draw(ImageDraw.Draw(self.canvas))
        count = int(np.count_nonzero(np.asarray(self.canvas)))
        if count - self.count > cap:
            self.canvas = before
            return False
        self.count = count
        return True


def generate_mask(rng: np.random.Generator, size: int, bucket: int,
                  boxes: bool = False) -> np.ndarray:
    """Free-form mask whose hole ratio lies in BUCKETS[bucket].

    Strokes grow step by step until the hole area reaches a target drawn inside the bucket; steps
    that would overshoot the bucket are undone and retried finer (rejection sampling of whole
    masks would accept only a small fraction of draws).
    """
    lo, hi = BUCKETS[bucket]
    total = size * size
    lo_px = math.floor(lo * total) + 1  # strictly above lo
    hi_px = math.floor(hi * total)
    if lo_px > hi_px:
        raise ValueError(f"a {size}x{size} mask cannot have a hole ratio in bucket {bucket}")
    target = int(rng.integers(lo_px, hi_px + 1))
    brush = _Brush(rng, size)
    for _ in range(100 * total):  # a safety net: strokes wander on until the target is met
        if brush.count >= target:
            break
        cap = hi_px - brush.count
        if boxes and rng.random() < 0.05:
            brush.paint_box(cap)
        else:
            brush.paint_step(target - brush.count, cap)
    else:
        raise RuntimeError(f"mask generator did not reach {target} px (bucket {bucket})")
    return (np.asarray(brush.canvas) >= 128).astype(np.uint8)
