"""Tracking: MLflow runs, their records (datasets, checkpoints, evaluations) and the logged model.
Only the trainer and the entry points import it.
"""
