"""Default SentencePiece vocabularies (T5 and mT5), resolved lazily.

The tasks are registered at import time, but the vocabulary model is only read
when something is first tokenized. Its path is looked up at that moment, in this
order:

1. a path set with `set_vocab_path(...)` (e.g. by tests or a CLI flag);
2. the environment variable `PROMPT_TUNING_VOCAB` (T5) or
   `PROMPT_TUNING_MT5_VOCAB` (mT5);
3. the public `gs://t5-data` model that T5 / mT5 were trained with.

So `PROMPT_TUNING_VOCAB=/path/to/sentencepiece.model` makes every registered
T5 task tokenize offline with that file.
"""
from __future__ import annotations

import os
from typing import Literal

import seqio

T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
T5_EXTRA_IDS = 100
T5_VOCAB_ENV = "PROMPT_TUNING_VOCAB"

# The mT5 model already holds its 100 sentinels, so no extra ids are added.
MT5_VOCAB_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
MT5_EXTRA_IDS = 0
MT5_VOCAB_ENV = "PROMPT_TUNING_MT5_VOCAB"

VocabKind = Literal["t5", "mt5"]
_ENV_VARS = {"t5": T5_VOCAB_ENV, "mt5": MT5_VOCAB_ENV}
_DEFAULT_PATHS = {"t5": T5_VOCAB_PATH, "mt5": MT5_VOCAB_PATH}
_OVERRIDES: dict[str, str] = {}


def _check_kind(kind: str) -> None:
  if kind not in _ENV_VARS:
    raise ValueError(f"Unknown vocabulary kind {kind!r}; use one of {sorted(_ENV_VARS)}.")


def set_vocab_path(path: str | os.PathLike | None, kind: VocabKind = "t5") -> None:
  """Points the default `kind` vocabulary at `path`; `None` removes the override."""
  _check_kind(kind)
  if path is None:
    _OVERRIDES.pop(kind, None)
  else:
    _OVERRIDES[kind] = os.fspath(path)


def vocab_path(kind: VocabKind = "t5") -> str:
  """The SentencePiece model path the `kind` vocabulary currently resolves to."""
  _check_kind(kind)
  return _OVERRIDES.get(kind) or os.environ.get(_ENV_VARS[kind]) or _DEFAULT_PATHS[kind]


class DeferredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` whose model path is resolved on load.

  The path is re-resolved each time the model is needed; if it changed since the
  last load, the new model is loaded.
  """

  def __init__(self, kind: VocabKind, extra_ids: int):
    _check_kind(kind)
    self._kind = kind
    super().__init__(vocab_path(kind), extra_ids=extra_ids)

  @property
  def sentencepiece_model_file(self) -> str:
    return vocab_path(self._kind)

  def _model_context(self):
    path = vocab_path(self._kind)
    if path != self._sentencepiece_model_file:
      self._sentencepiece_model_file = path
      self._model = None
    return super()._model_context()


_T5_VOCABULARY = DeferredSentencePieceVocabulary("t5", T5_EXTRA_IDS)
_MT5_VOCABULARY = DeferredSentencePieceVocabulary("mt5", MT5_EXTRA_IDS)


def get_t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """The T5 vocabulary (32,000 pieces + 100 extra ids) shared by all T5 tasks."""
  return _T5_VOCABULARY


def get_mt5_vocabulary() -> seqio.SentencePieceVocabulary:
  """The mT5 vocabulary (250,100 pieces incl. sentinels) shared by all mT5 tasks."""
  return _MT5_VOCABULARY
