"""inpaint.py on a real photo of arbitrary size: known pixels bit-exact, the hole filled, errors."""
import subprocess

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.helpers import run_cli
from tests.helpers.checkpoints import make_checkpoint

pytestmark = pytest.mark.slow


def _inpaint(*args: str) -> subprocess.CompletedProcess:
    return run_cli("inpaint.py", *args, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    photo = data.astronaut()[:150, :230]  # not square, not the model's 32 px
    Image.fromarray(photo).save(root / "photo.png")
    hole = np.zeros(photo.shape[:2], np.uint8)
    hole[40:90, 100:170] = 255
    hole[5:9, 3:200] = 255  # a thin stroke
    Image.fromarray(hole).save(root / "mask.png")
    Image.fromarray(hole).save(root / "mask.jpg", quality=85)  # nearly binary
    Image.fromarray(255 - hole).save(root / "black_holes.png")
    Image.fromarray(hole[:, :200]).save(root / "narrow.png")
    Image.fromarray(np.full_like(hole, 128)).save(root / "grey.png")
    Image.fromarray(np.zeros_like(hole)).save(root / "empty.png")
    (root / "not_an_image.png").write_text("hello")
    return {"root": root, "photo": photo, "hole": hole > 0,
            "ckpt": make_checkpoint(root / "joint"),
            "edge": make_checkpoint(root / "edge", stage="edge", generators=("g1",))}


@pytest.mark.parametrize("mask, extra", [("mask.png", []), ("mask.jpg", []),
                                         ("black_holes.png", ["--invert-mask"])])
def test_any_size_keeps_known_pixels_and_fills_the_hole(files, tmp_path, mask, extra):
    out = tmp_path / "out.png"
    result = _inpaint("--checkpoint", str(files["ckpt"]), "--image",
                      str(files["root"] / "photo.png"), "--mask", str(files["root"] / mask),
                      "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    assert "image 230x150" in result.stdout and "reflect-padded to 230x230" in result.stdout
    assert "resized to 32x32" in result.stdout and "only hole pixels replaced" in result.stdout
    got, photo = np.asarray(Image.open(out)), files["photo"]
    hole = np.asarray(Image.open(files["root"] / mask).convert("L")) >= 128  # the documented rule
    hole = ~hole if extra else hole
    assert np.mean(hole != files["hole"]) < 0.01  # JPEG ringing moves at most a few border pixels
    assert got.shape == photo.shape
    assert np.array_equal(got[~hole], photo[~hole])
    assert np.mean(got[hole] != photo[hole]) > 0.5  # the hole content was replaced


@pytest.mark.parametrize("args, message", [
    (["--mask", "narrow.png"], "is 200x150 but the image is 230x150"),
    (["--mask", "grey.png"], "is not binary"),
    (["--mask", "empty.png"], "has no hole pixels"),
    (["--mask", "missing.png"], "mask file not found"),
    (["--image", "missing.png"], "image file not found"),
    (["--image", "not_an_image.png"], "is not a readable image"),
    (["--checkpoint", "EDGE"], "is an edge-stage checkpoint"),
    (["--checkpoint", "nowhere"], "no complete checkpoint at"),
])
def test_bad_inputs_are_named(files, tmp_path, args, message):
    root = files["root"]
    chosen = {"--checkpoint": str(files["ckpt"]), "--image": str(root / "photo.png"),
              "--mask": str(root / "mask.png")}
    flag, value = args
    chosen[flag] = str(files["edge"]) if value == "EDGE" else str(root / value)
    result = _inpaint(*[x for kv in chosen.items() for x in kv], "--out", str(tmp_path / "o.png"))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def _args(files, **chosen) -> list[str]:
    root = files["root"]
    values = {"--checkpoint": str(files["ckpt"]), "--image": str(root / "photo.png"),
              "--mask": str(root / "mask.png"), **chosen}
    return [x for kv in values.items() for x in kv]


@pytest.mark.parametrize("out, message", [
    ("result", "no extension"),
    ("result.gif", "extension '.gif'"),
    ("result.jpg", "--allow-lossy"),
    ("/proc/dina/out.png", "cannot write into /proc"),
    ("photo.png/out.png", "is not a directory"),
    (".", "is a directory"),
])
def test_out_is_checked_before_the_model_runs(files, out, message):
    out = out if out.startswith("/") else str(files["root"] / out)
    # a checkpoint that does not exist: the --out error must come first, with exit 2, one line
    result = _inpaint(*_args(files, **{"--checkpoint": "/nowhere"}), "--out", out)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_jpeg_out_needs_allow_lossy_and_says_known_pixels_changed(files, tmp_path):
    out = tmp_path / "out.jpg"
    result = _inpaint(*_args(files), "--out", str(out), "--allow-lossy")
    assert result.returncode == 0, result.stderr
    assert "NOT bit-exact" in result.stdout and "known pixels unchanged" not in result.stdout
    got = np.asarray(Image.open(out))
    hole = files["hole"]
    assert not np.array_equal(got[~hole], files["photo"][~hole])  # why it has to be said


def test_webp_out_is_lossless_and_a_failed_run_keeps_an_existing_out(files, tmp_path):
    out = tmp_path / "out.webp"
    result = _inpaint(*_args(files), "--out", str(out))
    assert result.returncode == 0, result.stderr
    got, hole = np.asarray(Image.open(out)), files["hole"]
    assert np.array_equal(got[~hole], files["photo"][~hole])
    before = out.read_bytes()
    failed = _inpaint(*_args(files, **{"--mask": str(files["root"] / "grey.png")}), "--out",
                      str(out))
    assert failed.returncode == 2 and out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.webp"]  # no temporary left behind


def test_a_mask_stored_as_0_1_values_is_read_as_binary(files, tmp_path):
    path = tmp_path / "mask01.png"
    Image.fromarray(files["hole"].astype(np.uint8)).save(path)  # values 0 and 1
    out = tmp_path / "out.png"
    result = _inpaint(*_args(files, **{"--mask": str(path)}), "--out", str(out))
    assert result.returncode == 0, result.stderr
    got, hole = np.asarray(Image.open(out)), files["hole"]
    assert np.array_equal(got[~hole], files["photo"][~hole])
    assert np.mean(got[hole] != files["photo"][hole]) > 0.5
