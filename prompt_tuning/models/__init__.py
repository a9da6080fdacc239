"""T5 1.1 layers and stacks, and a decoder-only model, in flax.linen with T5X/Flaxformer parameter names and
numerics."""

from prompt_tuning.models.config import SIZES, DecoderOnlyConfig, T5Config, get_config, get_decoder_only_config
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.t5 import Decoder, Encoder, EncoderDecoder

__all__ = ["SIZES", "DecoderOnlyConfig", "T5Config", "get_config", "get_decoder_only_config", "DecoderOnly",
           "Decoder", "Encoder", "EncoderDecoder"]
