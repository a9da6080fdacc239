"""SeqIO feature converters for the model wrappers: T5X's encoder-decoder and decoder-only features, plus a family's
batch features.

A prompt family may read extra batch features (e.g. `task_ids`, `prompt_tuning.family.TASK_IDS`). They reach the
batch when the task provides them and the task feature lengths name them (`'task_ids': 1`); without them the
conversion is exactly `seqio.EncDecFeatureConverter`'s.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError


class PassThroughEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that passes `features` (int32, [B, length]) through when the lengths name them."""

  def __init__(self, pack: bool = False, features: Sequence[str] = (), **kwargs: Any):
    spec = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
    super().__init__(pack=pack, passthrough_features={name: spec for name in features}, **kwargs)
    self._features = tuple(features)
    self._plain = seqio.EncDecFeatureConverter(pack=pack, **kwargs)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    named = [name for name in self._features if name in task_feature_lengths]
    if not named:
      return self._plain(ds, task_feature_lengths)
    if len(named) < len(self._features):
      return PassThroughEncDecFeatureConverter(self.pack, named)(ds, task_feature_lengths)
    return super().__call__(ds, task_feature_lengths)


def enc_dec_converter(features: Sequence[str] = ()) -> Callable[..., seqio.FeatureConverter]:
  """The converter class (called as T5X calls `FEATURE_CONVERTER_CLS(pack=...)`) for a family's features."""
  if not features:
    return seqio.EncDecFeatureConverter
  return functools.partial(PassThroughEncDecFeatureConverter, features=tuple(features))


def decoder_converter(features: Sequence[str] = (), bos_id: int = 0) -> Callable[..., seqio.FeatureConverter]:
  """`seqio.DecoderFeatureConverter` (language-model features, or prefix-LM ones when the task has inputs), with
  `bos_id` in the BOS slot of `decoder_input_tokens`.

  A family's batch `features` are not passed through from the task: eval and infer add the task ids of a prompt
  bank after the conversion, and a prompt ensemble adds its own; a task whose feature lengths name them is refused.
  """
  kwargs = {} if bos_id == 0 else {"bos_id": bos_id}
  if features:
    return functools.partial(DecoderFeaturesAddedLater, features=tuple(features), **kwargs)
  return functools.partial(seqio.DecoderFeatureConverter, **kwargs) if kwargs else seqio.DecoderFeatureConverter


class DecoderFeaturesAddedLater(seqio.DecoderFeatureConverter):
  """`DecoderFeatureConverter` for a family that reads batch `features` the task must not provide."""

  def __init__(self, features: Sequence[str] = (), **kwargs: Any):
    super().__init__(**kwargs)
    self._features = tuple(features)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    named = [name for name in self._features if name in task_feature_lengths]
    if named:
      raise UserError(f"TASK_FEATURE_LENGTHS names {named}, batch features the family's prompt reads, which the "
                      "decoder-only feature converter does not pass through from a task; drop them from "
                      "TASK_FEATURE_LENGTHS (eval and infer add a prompt bank's task ids themselves).")
    return super().__call__(ds, task_feature_lengths)
