"""pipeline.data.images: every pixel format becomes RGB uint8; every bad file becomes an ImageError."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2gray
from skimage.feature import canny

from pipeline.data.images import ImageError, canny_edges, load_image, read_image, to_gray
from tests.helpers.data_files import exif_rotated, make_image_zoo, photo, save


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, make_image_zoo(root)


def test_every_good_kind_decodes_to_square_rgb(zoo):
    root, expected = zoo
    for rel, outcome in expected.items():
        if outcome == "ok":
            rgb = load_image(root / rel, 32)
            assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8, rel


@pytest.mark.parametrize("rel", ["text.jpg", "truncated.jpg", "bomb.png", "bomb_warning.png",
                                 "empty.png", "missing_target.jpg"])
def test_bad_files_raise_image_error_with_reason(zoo, rel):
    root, expected = zoo
    with pytest.raises(ImageError, match=expected[rel]):
        load_image(root / rel, 32)


def test_directory_and_missing_path_are_unreadable(tmp_path):
    with pytest.raises(ImageError, match="unreadable"):
        load_image(tmp_path, 32)
    with pytest.raises(ImageError, match="unreadable"):
        load_image(tmp_path / "nope.png", 32)


def test_exif_orientation_is_applied(tmp_path):
    rgb, (width, height) = read_image(exif_rotated(tmp_path / "r.jpg"), 20)
    assert (width, height) == (20, 40)  # displayed size, after the rotation
    assert rgb[:8, :, 0].mean() > 200 and rgb[:8, :, 2].mean() < 50  # red on top
    assert rgb[-8:, :, 2].mean() > 200 and rgb[-8:, :, 0].mean() < 50  # blue below


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896], [65535, 65535]], np.uint16).repeat(8, 0).repeat(8, 1)
    rgb = load_image(save(tmp_path / "g.png", Image.fromarray(values)), 16)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 15].tolist() == [128, 128, 128]
    assert rgb[15, 0].tolist() == [255, 255, 255]


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    rgb = load_image(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")), 16)
    assert (rgb == 255).all()


def test_cmyk_gray_and_palette_keep_the_colours(tmp_path):
    src = photo(32)
    for mode, tol in (("CMYK", 40), ("P", 40)):
        out = load_image(save(tmp_path / f"{mode}.png" if mode == "P" else tmp_path / "c.jpg",
                              Image.fromarray(src).convert(mode)), 32)
        assert np.abs(out.astype(int) - src).mean() < tol, mode
    gray = load_image(save(tmp_path / "l.png", Image.fromarray(src).convert("L")), 32)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_centre_crop_and_upscale(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # the centre square is white, the sides black
    rgb = load_image(save(tmp_path / "w.png", Image.fromarray(wide)), 40)
    assert rgb.shape == (40, 40, 3) and rgb.min() > 200


def test_gray_and_edges_match_skimage():
    rgb = photo(64)
    np.testing.assert_allclose(to_gray(rgb), rgb2gray(rgb), atol=1e-6)
    edges = canny_edges(rgb)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    np.testing.assert_array_equal(edges > 0, canny(rgb2gray(rgb), sigma=2.0))
    assert (edges > 0).any()
