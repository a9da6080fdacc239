"""Output features of the registered tasks, keyed by the task-name model prefix."""
from __future__ import annotations

from typing import Mapping

import seqio

from prompt_tuning.data import vocab


def _features(vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
  # As T5's defaults: EOS appended to both sides, inputs optional (decoder-only use).
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


T5_FEATURES = _features(vocab.get_t5_vocabulary())
MT5_FEATURES = _features(vocab.get_mt5_vocabulary())

# "" is the T5 vocabulary (no prefix in task names); "mt5_" tasks use mT5's.
MODEL_TO_FEATURES: Mapping[str, Mapping[str, seqio.Feature]] = {
    "": T5_FEATURES,
    "mt5_": MT5_FEATURES,
}
