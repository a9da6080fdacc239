"""A TFDS dataset that the gs:// test prepares in its emulated bucket, and a SeqIO task that reads it from there
(`--tfds_data_dir=gs://...`) with the T5 vocabulary (`PROMPT_TUNING_VOCAB`, also on gs://)."""
from __future__ import annotations

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import vocab

TASK = "gcs_test_sentiment"
LABELS = ("negative", "positive")
_WORDS = {"negative": ("bad", "awful", "poor"), "positive": ("good", "great", "fine")}
SPLIT_SIZES = {"train": 32, "validation": 8}


class GcsTestSentiment(tfds.core.GeneratorBasedBuilder):
  """Short sentences labelled by their adjective; generated, nothing downloaded."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(names=LABELS)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(n) for split, n in SPLIT_SIZES.items()}

  def _generate_examples(self, n: int):
    for i in range(n):
      yield i, {"sentence": sentence(i), "label": i % 2}


def sentence(i: int) -> str:
  """Example i's text; its label is LABELS[i % 2]."""
  return f"a {_WORDS[LABELS[i % 2]][i % 3]} film {i}"


@seqio.map_over_dataset
def _as_text(example):
  return {"inputs": example["sentence"], "targets": tf.gather(tf.constant(LABELS), example["label"])}


def _accuracy(targets, predictions):
  return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / max(len(targets), 1)}


if TASK not in seqio.TaskRegistry.names():
  _features = {k: seqio.Feature(vocab.get_t5_vocabulary()) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add(
      TASK, source=seqio.TfdsDataSource(tfds_name=f"{TASK}:1.0.0"),
      preprocessors=[_as_text, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=_features, metric_fns=[_accuracy])
