"""The training harness shared by every task: a step-based loop with exact resume, EMA, clipping,
LR schedules, AMP and DDP, the equivariance callback, atomic checkpoints and local + wandb logging.

Entry point: ``python -m equivrepro.train task=… model=… data=… optim=…`` (Hydra).
"""
