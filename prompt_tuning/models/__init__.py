"""T5 1.1 layers and stacks in flax.linen with T5X/Flaxformer parameter names and numerics."""

from prompt_tuning.models.config import SIZES, T5Config, get_config
from prompt_tuning.models.t5 import Decoder, Encoder, EncoderDecoder

__all__ = ["SIZES", "T5Config", "get_config", "Decoder", "Encoder", "EncoderDecoder"]
