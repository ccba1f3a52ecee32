"""inpaint.py on folders: ten images paired with their masks by name, one bad pair skipped and
listed, a progress bar, and a second run that skips every output already written."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.folder_inference import plan_folder
from tests.helpers import run_cli
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.data_files import photo


def make_folders(root, n: int = 10):
    """n images of mixed sizes and formats, masks named <stem>.png or <stem>_mask.png; the mask
    of img03 has the wrong size (the bad pair)."""
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(n):
        rgb = photo(40 + 4 * i, seed=i)
        ext = ".png" if i % 2 else ".bmp"
        Image.fromarray(rgb).save(images / f"img{i:02d}{ext}")
        hole = np.zeros(rgb.shape[:2], np.uint8)
        hole[5:20, 8:25] = 255
        if i == 3:
            hole = np.zeros((10, 10), np.uint8)
        Image.fromarray(hole).save(masks / (f"img{i:02d}_mask.png" if i % 3 else f"img{i:02d}.png"))
    return images, masks


def test_pairing_by_name(tmp_path):
    images, masks = make_folders(tmp_path, 4)
    Image.fromarray(photo(40)).save(images / "lonely.png")
    (tmp_path / "out").mkdir()
    Image.fromarray(photo(40)).save(tmp_path / "out" / "img01.png")  # already done
    plan = plan_folder(str(images), str(masks), str(tmp_path / "out"))
    assert [t[0] for t in plan.todo] == ["img00.bmp", "img02.bmp", "img03.png"]
    assert [t[2].name for t in plan.todo] == ["img00.png", "img02_mask.png", "img03.png"]
    assert plan.done == ["img01.png"]
    assert plan.bad == [("lonely.png", f"no mask named lonely.* or lonely_mask.* in {masks}")]


@pytest.mark.slow
def test_folder_run_skips_the_bad_pair_then_what_is_done(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    images, masks = make_folders(tmp_path)
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--images", str(images), "--masks", str(masks),
            "--out", str(out), "--device", "cpu"]
    first = run_cli("inpaint.py", *args)
    assert first.returncode == 2, first.stderr
    assert "Traceback" not in first.stderr
    assert "9 written, 0 already done (skipped), 1 bad pair(s) skipped" in first.stdout
    assert "bad: img03.bmp" not in first.stdout and "bad: img03.png: mask" in first.stdout
    assert "10x10 but the image is 52x52" in first.stdout
    assert "inpaint: 100%" in first.stderr  # the progress bar
    assert first.stderr.strip().splitlines()[-1].startswith("inpaint.py: error: 1 bad pair")
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"img{i:02d}.png" for i in range(10) if i != 3]
    for i in (0, 7):  # known pixels exact, the hole filled
        src = np.asarray(Image.open(next(images.glob(f"img{i:02d}.*"))).convert("RGB"))
        got = np.asarray(Image.open(out / f"img{i:02d}.png"))
        known = np.ones(src.shape[:2], bool)
        known[5:20, 8:25] = False
        assert got.shape == src.shape and np.array_equal(got[known], src[known])
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    second = run_cli("inpaint.py", *args)
    assert second.returncode == 2
    assert "0 written, 9 already done (skipped), 1 bad pair(s) skipped" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_unusable_folders_exit_2_with_one_line(tmp_path):
    images, masks = make_folders(tmp_path, 2)
    for args, named in ([("--images", tmp_path / "nope", "--masks", masks), "nope"],
                        [("--images", tmp_path / "masks", "--masks", masks,
                          "--image", images / "img00.bmp"), "--image and --mask"]):
        result = run_cli("inpaint.py", "--checkpoint", tmp_path / "no-ckpt", *args,
                         "--out", tmp_path / "out")
        assert result.returncode == 2, result.stderr
        assert named in result.stderr and "Traceback" not in result.stderr
        errors = [l for l in result.stderr.splitlines() if l.startswith("inpaint.py: error")]
        assert len(errors) == 1 and named in errors[0]  # argparse prints its usage above
