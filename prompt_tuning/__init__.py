"""prompt_tuning: soft prompts on frozen T5-family models (Lester et al. 2021) in JAX/Flax, T5X-compatible."""

__version__ = "0.1.0"
