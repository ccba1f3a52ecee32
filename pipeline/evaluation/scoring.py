"""Score a fill method per hole-area bucket: the core of pipeline/evaluate.py and of training
validation, so both report the same numbers for the same inputs.

A method fills each eval batch's holes; the output is composited (known pixels kept) and scored
with PSNR / SSIM on RGB at [0, 255] (pipeline.evaluation.metrics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from PIL import Image
from tqdm import tqdm

from pipeline.data.decode import uint8_images
from pipeline.data.masks import bucket_name
from pipeline.evaluation.inference import Fill
from pipeline.evaluation.metrics import BucketMeter, score_batch
from pipeline.evaluation.suite import MetricSuite
from pipeline.models.contract import composite


def image_filename(key: str, bucket: int) -> str:
    """`<image-key>__<bucket>.png`; folders in the key become '_'."""
    return f"{str(key).replace('/', '_')}__{bucket_name(int(bucket))}.png"


@torch.no_grad()
def evaluate(loader: Iterable[dict], fill: Fill, device: str | torch.device = "cpu",
             image_dir: Optional[Path] = None, progress: bool = True,
             suite: Optional[MetricSuite] = None) -> tuple[dict, list[dict]]:
    """Fill, composite and score every eval batch of `loader`.

    Returns (summary, per_image): `BucketMeter.summary()` and one record per image
    {image_key, mask_key, bucket, hole_ratio, psnr, ssim}; with a `suite`
    (pipeline.evaluation.suite), its metrics and its summary instead. With `image_dir`, every
    composited output is written there as a PNG.
    """
    meter, per_image = BucketMeter(), []
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        output = composite(fill(batch), batch["image"], batch["mask"])
        buckets = batch["bucket"].cpu()
        if suite is None:
            scores = dict(zip(("psnr", "ssim"), score_batch(output, batch["image"])))
            meter.add(scores["psnr"], scores["ssim"], buckets)
        else:
            scores = suite.score(output, batch["image"], buckets, batch["key"])
        for i, key in enumerate(batch["key"]):
            per_image.append({"image_key": key, "mask_key": batch["mask_key"][i],
                              "bucket": bucket_name(int(buckets[i])),
                              "hole_ratio": float(batch["hole_ratio"][i]),
                              **{name: float(values[i]) for name, values in scores.items()}})
        if image_dir is not None:
            for key, b, rgb in zip(batch["key"], buckets, uint8_images(output)):
                Image.fromarray(rgb).save(image_dir / image_filename(key, b))
    return (meter.summary() if suite is None else suite.summary()), per_image
