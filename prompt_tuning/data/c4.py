"""C4 pretraining tasks; importing this module registers them.

* `c4_v220_prefix_lm`: T5's prefix-LM objective on TFDS `c4/en:2.2.0` (the C4 version T5 1.1 was pretrained
  on), the objective of the paper's "LM adaptation" (runs/lm_adapt.gin). Each document is tokenized and cut
  into consecutive pieces of `inputs length - 1` tokens (pieces under 2 tokens are dropped); each piece is
  cut again at a uniform random point in [1, piece length - 1]: inputs the start, targets the rest, EOS
  appended to both. With `sequence_length=None` (inspecting examples) a document stays one piece.

  Unlike T5's `prefix_lm`, no random chunk of at most 65,536 tokens is picked from a document first: a
  longer document gives all its pieces (C4 documents are rarely that long).
  Example with inputs length 3 (pieces of 2 tokens, so each cut after its first token): "The dog ran to the
  park." -> ("The", "dog"), ("ran", "to"), ("the", "park"); "." alone is dropped.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import seqio

from prompt_tuning.data import features
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

TFDS_NAME = "c4/en:2.2.0"
PREFIX_LM = "c4_v220_prefix_lm"


def prefix_lm_preprocessors() -> list[Callable[..., Any]]:
  """The pipeline from raw `{"text": ...}` examples to prefix-LM inputs and targets (any vocabulary)."""
  return [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
          seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), preprocessors.split_tokens,
          preprocessors.prefix_lm_split, seqio.preprocessors.append_eos_after_trim]


def register() -> None:
  """Registers `c4_v220_prefix_lm` (replacing an older registration); reads no data."""
  utils.add_task(PREFIX_LM, source=seqio.TfdsDataSource(tfds_name=TFDS_NAME),
                 preprocessors=prefix_lm_preprocessors(), output_features=features.T5_FEATURES, metric_fns=[])


register()
