"""Loss terms: what each scores."""
import pytest
import torch

from pipeline.training.losses import discriminator_accuracy, hole_edge_bce, hole_weighted_l1


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



def test_hole_edge_bce_weighs_the_rare_edges_by_its_balance():
    """The best constant guess is the edge share with balance 0 (plain BCE) and 1/2 with
    balance 1 (both classes weigh the same); pixels outside the hole do not count."""
    truth = torch.zeros(1, 1, 10, 10)
    truth[0, 0, 0, :2] = 1  # 2 edge pixels in a 40-pixel hole: 5 %
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, :4] = 1
    guesses = torch.linspace(0.01, 0.99, 99)

    def best_constant(balance: float) -> float:
        losses = [hole_edge_bce(torch.full_like(truth, float(g)), truth, mask, balance)
                  for g in guesses]
        return float(guesses[int(torch.stack(losses).argmin())])

    assert best_constant(0.0) == pytest.approx(0.05, abs=0.006)
    assert best_constant(1.0) == pytest.approx(0.5, abs=0.006)
    assert 0.05 < best_constant(0.5) < 0.5
    pred = torch.rand_like(truth)
    elsewhere = pred.clone()
    elsewhere[0, 0, 5:] = 1 - elsewhere[0, 0, 5:]
    assert torch.equal(hole_edge_bce(pred, truth, mask, 0.5),
                       hole_edge_bce(elsewhere, truth, mask, 0.5))
    assert hole_edge_bce(truth, truth, mask, 0.5) < 1e-4  # the truth itself: near zero
