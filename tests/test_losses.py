"""G2's L1 term: what it scores."""
import torch

from pipeline.training.losses import hole_weighted_l1


def test_hole_l1_ignores_the_known_pixels_unless_asked():
    target = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # the top half is the hole
    output = target.clone()
    output[..., 2:, :] = 1.0  # wrong everywhere outside the hole, exact inside
    assert hole_weighted_l1(output, target, mask).item() == 0.0
    # EdgeConnect's: the whole image's L1 (0.5) over the hole fraction (0.5)
    assert hole_weighted_l1(output, target, mask, known_pixels=True).item() == 1.0
    output[..., :2, :] = 0.5  # 0.5 off in the hole: the mean hole error, whatever the hole size
    assert torch.isclose(hole_weighted_l1(output, target, mask), torch.tensor(0.5))
