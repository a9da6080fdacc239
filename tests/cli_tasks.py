"""A tiny offline SeqIO task for CLI tests (byte vocabulary: no download, no ../shared)."""
from __future__ import annotations

import seqio
import tensorflow as tf

VOCAB = seqio.ByteVocabulary()
WORDS = {"good": "yes", "bad": "no"}


def _examples(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed
  n = 48 if split == "train" else 8
  rows = [{"inputs": f"is {w} {i}", "targets": WORDS[w]} for i in range(n) for w in [list(WORDS)[i % 2]]]
  return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in ("inputs", "targets")})


def _accuracy(targets, predictions):
  return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / max(len(targets), 1)}


if "cli_test_task" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "cli_test_task", source=seqio.FunctionDataSource(_examples, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)},
      metric_fns=[_accuracy])
