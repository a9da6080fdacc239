"""A tiny offline prefix-LM task for LM-adaptation CLI tests: C4's pipeline (`c4.prefix_lm_preprocessors`) over
in-memory documents, byte vocabulary (no download, no ../shared)."""
from __future__ import annotations

import seqio
import tensorflow as tf

from prompt_tuning.data import c4, utils

VOCAB = seqio.ByteVocabulary()
NAME = "test_prefix_lm"


def _documents(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed
  count = 32 if split == "train" else 4
  texts = [f"document {i} says that the cat sat on mat number {i}." for i in range(count)]
  return tf.data.Dataset.from_tensor_slices({"text": texts})


utils.add_task(NAME, source=seqio.FunctionDataSource(_documents, splits=["train", "validation"]),
               preprocessors=c4.prefix_lm_preprocessors(),
               output_features={"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}, metric_fns=[])
