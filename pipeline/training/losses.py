"""GAN losses of the two stages (EdgeConnect's recipe, as the paper uses it).

Discriminators end in logits, so the adversarial terms use BCE-with-logits (numerically safer under
mixed precision than a sigmoid followed by BCE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.vgg import VGG19Features

PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D learns real -> 1, fake -> 0; halved as in EdgeConnect so D and G terms share a scale."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(share of real patches D calls real, share of fake patches it calls fake): logit > 0 is
    "real". Both near 0.5 mean D tells nothing apart, whatever its loss."""
    with torch.no_grad():
        return (real_logits > 0).float().mean(), (fake_logits <= 0).float().mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def feature_matching_loss(real_features: list[torch.Tensor],
                          fake_features: list[torch.Tensor]) -> torch.Tensor:
    """L1 between D's intermediate activations on real and generated edges (G1)."""
    return sum(F.l1_loss(fake, real.detach()) for real, fake in zip(real_features, fake_features))


def hole_edge_bce(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor,
                  balance: float) -> torch.Tensor:
    """BCE of edge probabilities against the true edges over the hole pixels, each edge pixel
    weighted by (non-edge pixels / edge pixels) ** balance: rare edges are not worth drawing to
    an unweighted BCE. Computed in float32 on the device (no host sync)."""
    p = pred.float().clamp(1e-6, 1 - 1e-6)
    hole = (mask > 0.5).float()
    edge = (truth > 0.5).float() * hole
    n_edge = edge.sum()
    weight = ((hole.sum() - n_edge) / n_edge.clamp_min(1)).clamp_min(1) ** balance
    pixels = -(weight * edge * p.log() + (hole - edge) * (1 - p).log())
    return pixels.sum() / (hole.sum() + (weight - 1) * n_edge).clamp_min(1)


def hole_weighted_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     known_pixels: bool = False) -> torch.Tensor:
    """L1 divided by the hole fraction: over the hole only (the composite keeps the known
    pixels, so G2 need not reproduce them), or with `known_pixels` over the whole image
    (EdgeConnect's G2 L1 term)."""
    if not known_pixels:
        output, target = output * mask, target * mask
    return F.l1_loss(output, target) / mask.mean().clamp_min(1e-3)


def gram(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class VGGLoss(nn.Module):
    """Perceptual (relu1_1..relu5_1) and style (Gram matrices) losses over frozen VGG19 features.

    As in EdgeConnect, the perceptual term compares whole images and the style term compares the
    hole region only (Gram matrices of output*M and target*M), so the known pixels, which the
    composite replaces anyway, do not dilute the texture statistics of the fill.
    """

    def __init__(self, weights: str):
        super().__init__()
        self.vgg = VGG19Features(weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_f = self.vgg(output)
        with torch.no_grad():
            tgt_f = self.vgg(target)
            tgt_hole = self.vgg(target * mask)
        out_hole = self.vgg(output * mask)
        perceptual = sum(F.l1_loss(out_f[k], tgt_f[k]) for k in PERCEPTUAL_LAYERS)
        style = sum(F.l1_loss(gram(out_hole[k]), gram(tgt_hole[k])) for k in STYLE_LAYERS)
        return perceptual, style
