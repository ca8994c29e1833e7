"""Training: typed configs, the loop, metrics, self-describing checkpoints."""
