"""T5X-like runtime: model wrapper, decoding, partitioning, optimisation, checkpoints and trainer."""
