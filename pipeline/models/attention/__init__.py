"""Backends of the dilated neighbourhood attention op (`pipeline.models.dina.na2d`).

Each backend module exposes `na2d(q, k, v, kernel_size, dilation, rpb)` on heads-last tensors
[B, H, W, heads, head_dim]. `neighbourhood` holds the index rule they all share.
"""
