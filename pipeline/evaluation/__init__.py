"""Evaluation: metrics per hole-area bucket, their tables, the scoring loop, baselines, and loading
a checkpoint for inference (at the training size or any size).
"""
