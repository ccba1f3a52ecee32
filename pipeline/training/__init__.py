"""Training: the stage table, one step of each kind, losses and optimizers, the trainer's loop,
its checkpoints and the output directory's lock.
"""
