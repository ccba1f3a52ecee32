"""Inpainting a folder: images and masks paired by file name, one PNG per image in the output
folder, bad pairs skipped and listed with their reasons, and outputs already written skipped on
a re-run (each is written under a temporary name and renamed, so a file there is complete).

Pairing: the mask of `photo.jpg` is the file in the masks folder whose stem is `photo` or
`photo_mask` (any image extension). Output: OUT/<stem>.png (lossless: known pixels exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.data.images import IMAGE_EXTS
from pipeline.evaluation.any_size import inpaint_image
from pipeline.evaluation.image_files import (LOSSLESS, InpaintError, output_format, read_mask,
                                             read_rgb, write_output)

MASK_SUFFIXES = ("", "_mask")


@dataclass
class FolderPlan:
    """What a folder run does: `todo` [(name, image, mask, output)], `done` (outputs already
    there), `bad` [(name, reason)], and how many were written."""
    out: Path
    todo: list[tuple[str, Path, Path, Path]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    written: int = 0

    def report(self) -> str:
        lines = [f"{self.written} written, {len(self.done)} already done (skipped), "
                 f"{len(self.bad)} bad pair(s) skipped; outputs in {self.out}"]
        lines += [f"  bad: {name}: {reason}" for name, reason in self.bad]
        return "\n".join(lines)


def _files(folder: str, what: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise InpaintError(f"--{what} {folder}: not a folder")
    return sorted(p for p in path.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTS)


def plan_folder(images: str, masks: str, out: str) -> FolderPlan:
    """Pair every image with its mask (module doc); InpaintError for an unusable folder."""
    image_files, mask_files = _files(images, "images"), _files(masks, "masks")
    if not image_files:
        raise InpaintError(f"--images {images}: no image files ({', '.join(IMAGE_EXTS)})")
    output_format(str(Path(out) / "probe.png"), False)  # a writable folder, checked up front
    plan = FolderPlan(Path(out))
    by_stem: dict[str, list[Path]] = {}
    for mask in mask_files:
        by_stem.setdefault(mask.stem, []).append(mask)
    stems = [p.stem for p in image_files]
    for image in image_files:
        candidates = [m for s in MASK_SUFFIXES for m in by_stem.get(image.stem + s, [])]
        if stems.count(image.stem) > 1:
            plan.bad.append((image.name, f"another image is also named {image.stem}.* (both "
                                         f"would write {image.stem}.png)"))
        elif not candidates:
            plan.bad.append((image.name, f"no mask named {image.stem}.* or "
                                         f"{image.stem}_mask.* in {masks}"))
        elif len(candidates) > 1:
            plan.bad.append((image.name, "several masks match: "
                                         + ", ".join(m.name for m in candidates)))
        elif (Path(out) / f"{image.stem}.png").is_file():
            plan.done.append(image.name)
        else:
            plan.todo.append((image.name, image, candidates[0], Path(out) / f"{image.stem}.png"))
    return plan


def run_folder(plan: FolderPlan, g1, g2, size: int, device: str, invert_mask: bool,
               progress: bool = True) -> None:
    """Inpaint every pair of `plan.todo` with a progress bar; a pair that fails to read
    (unreadable image, mask of another size, grey or empty mask) joins `plan.bad`."""
    for name, image, mask, output in tqdm(plan.todo, desc="inpaint", unit="image",
                                          disable=not progress):
        try:
            rgb = read_rgb(str(image))
            hole = read_mask(str(mask), (rgb.shape[1], rgb.shape[0]), invert_mask)
            if not hole.any():
                raise InpaintError(f"mask {mask.name} has no hole pixels (white = hole; "
                                   f"--invert-mask if the holes are black)")
        except InpaintError as err:
            plan.bad.append((name, str(err)))
            continue
        result, _ = inpaint_image(rgb, hole, g1, g2, size, device)
        write_output(str(output), result, LOSSLESS[".png"])
        plan.written += 1
