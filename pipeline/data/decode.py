"""Shard bytes to arrays, and arrays to the batch dict every stage and metric reads.

Batches are dicts of float32 NCHW tensors: image [B,3,H,W] in [0,1], gray [B,1,H,W], edge
[B,1,H,W] in {0,1} (Canny of the full image), mask [B,1,H,W] in {0,1} with 1 = hole.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from pipeline.data.images import GRAY_WEIGHTS, canny_edges, center_square, decode_rgb, resize_rgb
from pipeline.data.masks import decode_mask
from pipeline.data.shards import DataError


def image_and_edge(image: bytes, edge: Optional[bytes],
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard bytes -> (rgb uint8, edge {0,1}); shards made at another size are resized and
    their edges recomputed at this size (Canny depends on scale)."""
    rgb = decode_rgb(image)[0]
    if rgb.shape[0] == rgb.shape[1] == size and edge is not None:
        return rgb, decode_mask(edge)  # an edge map is stored as a mask is: 0/255 PNG
    rgb = resize_rgb(center_square(rgb), size)
    return rgb, (canny_edges(rgb) > 0).astype(np.uint8)


def image_bytes(sample: dict) -> bytes:
    for ext in ("jpg", "png", "jpeg"):
        if ext in sample:
            return sample[ext]
    raise DataError(f"sample has no image (jpg/png): fields {sorted(sample)}")


def float_images(rgb: np.ndarray) -> torch.Tensor:
    """[B,H,W,3] uint8 -> [B,3,H,W] float32 in [0, 1]."""
    # transpose while still uint8: converting a permuted (strided) tensor to float is ~7x slower
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))).float().div_(255)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1] -> uint8 in [0, 255], rounded as a PNG writer would store them."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def uint8_images(batch: torch.Tensor) -> list[np.ndarray]:
    """[B,3,H,W] in [0, 1] -> list of HxWx3 uint8 arrays (for OpenCV, skimage, PIL)."""
    return list(to_uint8(batch).permute(0, 2, 3, 1).cpu().numpy())


def collate(items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """[(rgb HxWx3 uint8, edge HxW {0,1}, mask HxW {0,1})] -> the batch dict."""
    image = float_images(np.stack([i[0] for i in items]))
    r, g, b = GRAY_WEIGHTS
    gray = (image[:, 0:1] * r).add_(image[:, 1:2], alpha=g).add_(image[:, 2:3], alpha=b)
    return {
        "image": image,
        "gray": gray,
        "edge": torch.from_numpy(np.stack([i[1] for i in items])[:, None]).float(),
        "mask": torch.from_numpy(np.stack([i[2] for i in items])[:, None]).float(),
    }


def batch_from_arrays(rgb: np.ndarray, hole: np.ndarray) -> dict:
    """[B,H,W,3] uint8 images and [B,H,W] hole masks -> a batch without edges (the test-time
    path computes them from the known region)."""
    hole = hole.astype(np.float32)
    return collate(list(zip(rgb, np.zeros_like(hole), hole)))
