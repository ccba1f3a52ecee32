"""Where images come from: the published datasets' folder layouts and splits, and the sample set's
photos bundled inside installed wheels.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from pipeline.data.images import IMAGE_EXTS, ImageInput, find_inputs
from pipeline.data.shard_writer import ShardError

# Paris StreetView as distributed by Pathak et al. (and as re-packed by others): first match wins
PARIS_TRAIN_DIRS = ("paris_train_original", "paris_train", "train")


PARIS_TEST_DIRS = ("paris_eval_gt", "paris_eval", "eval_gt", "val", "test")


CELEBA_DIRS = ("CelebA-HQ-img", "celeba_hq", "CelebA-HQ")


CELEBA_TRAIN = 28000  # ids 0..27999 train, 28000..29999 test


# the photos inside installed wheels that `sample` uses; test photos are never cropped into train
SAMPLE_TEST_PHOTOS = ("coffee", "grace_hopper")


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
