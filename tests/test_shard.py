"""`shard.py images|dataset|sample`: every input accounted for, stable keys, dataset layouts."""
from __future__ import annotations

import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data_files import SHARD, make_image_zoo, photo, read_index, run_shard, save
from tests.helpers.small_disk import small_disk

pytestmark = pytest.mark.slow  # every test runs shard.py as a real process


def keys_of(folder: Path) -> list[str]:
    keys = []
    for shard in read_index(folder)["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            keys += [m.name[:-5] for m in tar if m.name.endswith(".json")]
    return keys


def write_photos(folder: Path, names) -> None:
    for i, name in enumerate(names):
        save(folder / name, Image.fromarray(photo(40, i)))


def test_every_input_is_in_a_shard_or_skipped_with_its_reason(tmp_path):
    expected = make_image_zoo(tmp_path / "src")
    run_shard("images", tmp_path / "src", "--out", tmp_path / "out", "--size", 32,
              "--shard-size", 4, "--workers", 2)
    index = read_index(tmp_path / "out")
    files = [p for p in (tmp_path / "src").rglob("*") if p.is_file() or p.is_symlink()]
    assert index["inputs"] == len(files) == len(expected)
    assert index["samples"] + len(index["skipped"]) == index["inputs"]
    assert sum(s["samples"] for s in index["shards"]) == index["samples"]
    assert index["samples"] == sum(v == "ok" for v in expected.values())
    reasons = {str(Path(i["path"]).relative_to(tmp_path / "src")): i["reason"]
               for i in index["skipped"]}
    for rel, outcome in expected.items():
        if outcome != "ok":
            assert outcome in reasons[rel], (rel, reasons.get(rel))
    assert "images" in index["command"] and index["size"] == 32
    with tarfile.open(tmp_path / "out" / index["shards"][0]["name"]) as tar:
        names = tar.getnames()
        edge = Image.open(tar.extractfile(next(n for n in names if n.endswith(".edge.png"))))
        assert edge.mode == "L" and edge.size == (32, 32)
        assert set(np.unique(np.asarray(edge))) <= {0, 255}
    assert {n.split(".", 1)[1] for n in names} == {"jpg", "edge.png", "json"}


def test_min_size_skips_small_images_instead_of_upscaling(tmp_path):
    save(tmp_path / "src" / "small.png", Image.fromarray(photo(16)))
    save(tmp_path / "src" / "big.png", Image.fromarray(photo(48)))
    run_shard("images", tmp_path / "src", "--out", tmp_path / "out", "--size", 32,
              "--min-size", 32, "--format", "png")
    index = read_index(tmp_path / "out")
    assert index["samples"] == 1 and "min-size" in index["skipped"][0]["reason"]
    assert keys_of(tmp_path / "out") == ["big_png"]


def test_keys_are_stable_sorted_and_independent_of_workers(tmp_path):
    write_photos(tmp_path / "src", ["img10.png", "img2.png", "a/img1.png", "img1.jpg"])
    run_shard("images", tmp_path / "src", "--out", tmp_path / "one", "--size", 32,
              "--workers", 1, "--shard-size", 3)
    run_shard("images", tmp_path / "src", "--out", tmp_path / "two", "--size", 32,
              "--workers", 2, "--shard-size", 3)
    assert keys_of(tmp_path / "one") == ["a/img1_png", "img1_jpg", "img2_png", "img10_png"]
    one, two = read_index(tmp_path / "one"), read_index(tmp_path / "two")
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    # re-sharding into the same folder replaces the old shards
    run_shard("images", tmp_path / "src", "--out", tmp_path / "one", "--size", 32)
    assert sorted(p.name for p in (tmp_path / "one").glob("*.tar")) == ["shard-000000.tar"]


def test_several_sources_get_prefixed_keys(tmp_path):
    write_photos(tmp_path / "x", ["p.png"])
    write_photos(tmp_path / "y", ["p.png"])
    run_shard("images", tmp_path / "x", tmp_path / "y", tmp_path / "nowhere", "--out",
              tmp_path / "out", "--size", 32)
    index = read_index(tmp_path / "out")
    assert keys_of(tmp_path / "out") == ["x/p_png", "y/p_png"]
    assert index["skipped"] == [{"path": str(tmp_path / "nowhere"), "reason": "does not exist"}]


def test_empty_or_missing_source_fails_with_a_message(tmp_path):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "empty", tmp_path / "missing"):
        proc = run_shard("images", src, "--out", tmp_path / "out", check=False)
        assert proc.returncode != 0 and "no samples written" in proc.stderr
    assert read_index(tmp_path / "out")["skipped"][0]["reason"] == "does not exist"


def test_paris_layout(tmp_path):
    root = tmp_path / "paris"
    write_photos(root / "paris_train_original", ["001.png", "002.png", "003.png"])
    write_photos(root / "paris_eval_gt", ["001_im.png", "002_im.png"])
    run_shard("dataset", "paris", "--root", root, "--out", tmp_path / "out", "--size", 32)
    assert read_index(tmp_path / "out" / "train")["samples"] == 3
    assert keys_of(tmp_path / "out" / "test") == ["001_im_png", "002_im_png"]
    summary = read_index(tmp_path / "out")
    assert summary["splits"]["train"]["samples"] == 3 and summary["samples"] == 5


def test_paris_alternative_names_and_wrong_layout(tmp_path):
    write_photos(tmp_path / "p" / "paris_train", ["a.png"])
    write_photos(tmp_path / "p" / "paris_eval", ["b.png"])
    run_shard("dataset", "paris", "--root", tmp_path / "p", "--out", tmp_path / "out")
    proc = run_shard("dataset", "paris", "--root", tmp_path / "p" / "paris_train", "--out",
                     tmp_path / "bad", check=False)
    assert proc.returncode != 0 and "paris_train_original" in proc.stderr


def test_celeba_hq_numeric_split(tmp_path):
    ids = [10, 2, 0, 27999, 28000, 29999, 1]
    write_photos(tmp_path / "celeba" / "CelebA-HQ-img", [f"{i}.jpg" for i in ids])
    save(tmp_path / "celeba" / "CelebA-HQ-img" / "readme.jpg", Image.fromarray(photo(40)))
    run_shard("dataset", "celeba-hq", "--root", tmp_path / "celeba", "--out", tmp_path / "out",
              "--size", 32)
    assert keys_of(tmp_path / "out" / "train") == ["0_jpg", "1_jpg", "2_jpg", "10_jpg",
                                                   "27999_jpg"]
    assert keys_of(tmp_path / "out" / "test") == ["28000_jpg", "29999_jpg"]
    train = read_index(tmp_path / "out" / "train")
    assert "CelebA-HQ image name" in train["skipped"][0]["reason"]
    # a flat folder of <id>.jpg works too
    write_photos(tmp_path / "flat", ["5.jpg", "28001.jpg"])
    run_shard("dataset", "celeba-hq", "--root", tmp_path / "flat", "--out", tmp_path / "o2",
              "--size", 32)
    assert keys_of(tmp_path / "o2" / "test") == ["28001_jpg"]


def test_sample_set(tmp_path):
    start = time.monotonic()
    run_shard("sample", "--out", tmp_path / "s", "--size", 32, "--masks", 60)
    assert time.monotonic() - start < 30
    train, test = keys_of(tmp_path / "s" / "train"), keys_of(tmp_path / "s" / "test")
    photos = lambda keys: {k.rsplit("_", 1)[0] for k in keys}  # noqa: E731
    assert len(train) >= 30 and len(test) >= 8
    assert not photos(train) & photos(test)  # test photos never seen in training
    assert photos(test) == {"coffee", "grace_hopper"}
    masks = read_index(tmp_path / "s" / "masks")
    assert masks["samples"] == 60 and set(masks["buckets"].values()) == {10}
    assert set(read_index(tmp_path / "s")["splits"]) == {"train", "test", "masks"}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def good_set(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "src"
    for i in range(3):
        save(src / f"p{i}.png", Image.fromarray(photo(seed=i)))
    run_shard("images", src, "--out", tmp_path / "out", "--size", 32)
    return tmp_path / "out", tree_bytes(tmp_path / "out")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_a_failed_rerun_leaves_the_existing_shards_exactly_as_they_were(tmp_path):
    out, before = good_set(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not an image")
    for src in (tmp_path / "typo", tmp_path / "junk"):  # mistyped, then all bad
        proc = run_shard("images", src, "--out", out, "--size", 32, check=False)
        assert proc.returncode == 2 and "no samples written" in proc.stderr, proc.stderr
        assert f"{out} is unchanged" in proc.stderr
        assert tree_bytes(out) == before and leftovers(tmp_path) == []


def test_out_holding_other_files_is_refused_untouched(tmp_path):
    out, before = good_set(tmp_path)
    (out / "notes.txt").write_text("mine")
    proc = run_shard("images", tmp_path / "src", "--out", out, "--size", 32, check=False)
    assert proc.returncode == 2 and "notes.txt" in proc.stderr.strip().splitlines()[-1]
    assert tree_bytes(out) == {**before, "notes.txt": b"mine"}


def test_an_interrupted_run_leaves_out_as_it_was(tmp_path):
    out, before = good_set(tmp_path)
    src = tmp_path / "many"
    for i in range(300):
        save(src / f"p{i}.png", Image.fromarray(photo(size=256, seed=i)))
    proc = subprocess.Popen([*SHARD, "images", str(src), "--out", str(out), "--workers", "1",
                             "--shard-size", "5"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.partial-*/shard-000001.tar")):  # mid-way through
        assert proc.poll() is None and time.time() < deadline, "shard.py ended too early"
        time.sleep(0.05)
    proc.terminate()
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode != 0 and "unchanged" in err, err
    assert tree_bytes(out) == before and leftovers(tmp_path) == []


def test_out_of_disk_says_so_with_the_space_needed_and_keeps_out(tmp_path):
    with small_disk(tmp_path / "disk", 160) as disk:
        out = disk / "masks"
        run_shard("masks", "--generate", 6, "--size", 32, "--out", out)
        before = tree_bytes(out)
        proc = run_shard("masks", "--generate", 600, "--size", 64, "--out", out, "--workers", 1,
                         check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "no space left on device" in last and "needs about" in last and "MiB" in last
        assert "Traceback" not in proc.stderr
        assert tree_bytes(out) == before and leftovers(disk) == []


def test_keys_stay_unique_across_sources_and_odd_names(tmp_path):
    for i, rel in enumerate(["x/photos/a.png", "y/photos/a.png", "z/a.b/x.png", "z/a_b/x.png"]):
        save(tmp_path / rel, Image.fromarray(photo(seed=i)))
    run_shard("images", tmp_path / "x" / "photos", tmp_path / "y" / "photos", tmp_path / "z",
              "--out", tmp_path / "out", "--size", 32)
    index = read_index(tmp_path / "out")
    assert index["samples"] == 4 and index["skipped"] == []
    keys = keys_of(tmp_path / "out")
    assert len(set(keys)) == 4 and keys[0] == "photos/a_png"


def test_symlinked_folders_are_followed_once_and_loops_are_skipped(tmp_path):
    src = tmp_path / "src"
    save(src / "real" / "a.png", Image.fromarray(photo(seed=1)))
    save(tmp_path / "elsewhere" / "b.png", Image.fromarray(photo(seed=2)))
    (src / "linked").symlink_to(tmp_path / "elsewhere")  # followed: b.png is sharded
    (src / "twice").symlink_to(src / "real")  # a second way to the same folder
    (src / "real" / "loop").symlink_to(src)  # a cycle
    run_shard("images", src, "--out", tmp_path / "out", "--size", 32)
    index = read_index(tmp_path / "out")
    assert sorted(keys_of(tmp_path / "out")) == ["linked/b_png", "real/a_png"]
    skipped = {Path(s["path"]).name: s["reason"] for s in index["skipped"]}
    assert set(skipped) == {"twice", "loop"} and all("already read" in r for r in skipped.values())
    assert index["inputs"] == index["samples"] + len(index["skipped"])
