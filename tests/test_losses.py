"""G2's L1 term: what it scores."""
import torch

from pipeline.training.losses import discriminator_accuracy, hole_weighted_l1


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


def test_discriminator_accuracy_counts_patches_on_the_right_side_of_zero():
    real = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])  # 3 of 4 called real
    fake = torch.tensor([[[[-2.0, 1.0], [0.0, 1.0]]]])  # 2 of 4 called fake (0 is "fake")
    real_acc, fake_acc = discriminator_accuracy(real, fake)
    assert real_acc.item() == 0.75 and fake_acc.item() == 0.5

