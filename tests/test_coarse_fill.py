"""The pull-push fill G2 starts from with model.coarse_fill=pull-push."""
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.models.coarse_fill import pull_push_fill
from pipeline.models.factory import build_network

TINY = ["model.channels=8", "model.blocks=2", "model.d_channels=8", "model.attention.heads=2",
        "model.attention.kernel_size=3", "model.attention.dilations=[1,2]"]


def hole(height, width, box):
    mask = torch.zeros(1, 1, height, width)
    top, bottom, left, right = box
    mask[..., top:bottom, left:right] = 1
    return mask


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (64, 17)])
def test_known_pixels_come_back_and_the_hole_stays_within_their_range(size):
    torch.manual_seed(0)
    image = torch.rand(2, 3, *size)
    mask = hole(*size, (5, size[0] - 6, 3, size[1] - 4)).expand(2, 1, *size)
    filled = pull_push_fill(image * (1 - mask), mask)
    assert filled.shape == image.shape
    known = mask.expand_as(image) == 0
    torch.testing.assert_close(filled[known], image[known])
    inside = filled[~known]
    assert inside.min() >= image.min() and inside.max() <= image.max()


def test_a_flat_image_is_filled_flat_and_a_ramp_smoothly():
    mask = hole(32, 32, (8, 24, 8, 24))
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(pull_push_fill(flat * (1 - mask), mask), flat)

    ramp = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)  # left to right
    filled = pull_push_fill(ramp * (1 - mask), mask)[0, 0, 16, 8:24]
    assert (filled[1:] >= filled[:-1] - 1e-6).all()  # no worse than monotone across the hole
    assert filled[0] < filled[-1]
    # the fill's error inside the hole is far below the mean fill's
    known = 1 - mask
    mean = (ramp * known).sum() / (3 * known.sum())
    truth = ramp[0, 0, 16, 8:24]
    assert (filled - truth).abs().mean() < 0.5 * (mean - truth).abs().mean()


def test_an_image_with_no_known_pixel_comes_back_black():
    mask = torch.ones(1, 1, 16, 16)
    assert pull_push_fill(torch.zeros(1, 3, 16, 16), mask).abs().max() == 0


def test_an_untrained_coarse_fill_g2_returns_the_fill_and_learns_a_correction():
    cfg = load_config(overrides=TINY + ["model.coarse_fill=pull-push"]).model
    g2 = build_network("g2", cfg)
    torch.manual_seed(0)
    image, mask = torch.rand(2, 3, 32, 32), hole(32, 32, (4, 20, 6, 30)).expand(2, 1, 32, 32)
    x = torch.cat([image * (1 - mask), torch.rand(2, 1, 32, 32), mask], dim=1)
    out = g2(x)
    fill = pull_push_fill(image * (1 - mask), mask)
    assert torch.equal(out, fill)  # bit for bit: no clamp or round-off on the known pixels
    (out - image).abs().mean().backward()
    assert g2.head.weight.grad.abs().sum() > 0  # the zero head still learns

    plain = build_network("g2", load_config(overrides=TINY + ["model.coarse_fill=none"]).model)
    assert (plain(x) - fill).abs().mean() > 0.05  # the paper's G2 paints from scratch


def test_an_edge_fill_g1_reads_the_pull_push_fill_in_its_hole():
    """With model.edge_fill, G1's grayscale hole is the fill of the known pixels: what the input
    held there no longer matters, and the same input filled by hand gives the same edges."""
    spec = load_config(overrides=TINY + ["model.edge_fill=pull-push"]).model
    torch.manual_seed(0)
    filled, plain = build_network("g1", spec), build_network("g1", load_config(overrides=TINY).model)
    plain.load_state_dict(filled.state_dict())  # the same weights: only the input differs
    gray, mask = torch.rand(1, 1, 32, 32), hole(32, 32, (4, 20, 6, 30))
    edges = (torch.rand(1, 1, 32, 32) > 0.9).float() * (1 - mask)
    white = torch.cat([gray * (1 - mask) + mask, edges, mask], dim=1)  # EdgeConnect's input
    black = torch.cat([gray * (1 - mask), edges, mask], dim=1)
    filled.eval(), plain.eval()
    assert torch.equal(filled(white), filled(black))
    by_hand = torch.cat([pull_push_fill(gray * (1 - mask), mask), edges, mask], dim=1)
    assert torch.allclose(filled(white), plain(by_hand), atol=1e-6)
    assert not torch.allclose(plain(white), plain(black), atol=1e-3)


@pytest.mark.parametrize("key", ["coarse_fill", "edge_fill"])
def test_an_unknown_coarse_fill_is_named(key):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        load_config(overrides=TINY + [f"model.{key}=telea"])


def test_known_pixels_of_an_untrained_coarse_fill_g2_add_no_l1_gradient():
    """Where G2 has not moved a known pixel, L1 over the whole image has nothing to push there:
    the head's gradient is the hole's alone."""
    from pipeline.training.losses import hole_weighted_l1
    g2 = build_network("g2", load_config(overrides=TINY + ["model.coarse_fill=pull-push"]).model)
    torch.manual_seed(1)
    image, mask = torch.rand(2, 3, 32, 32), hole(32, 32, (4, 20, 6, 30)).expand(2, 1, 32, 32)
    x = torch.cat([image * (1 - mask), torch.rand(2, 1, 32, 32), mask], dim=1)
    grads = []
    for known_pixels in (False, True):
        g2.zero_grad()
        hole_weighted_l1(g2(x), image, mask, known_pixels).backward()
        grads.append(g2.head.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
