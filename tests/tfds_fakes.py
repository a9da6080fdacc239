"""Offline TFDS for task tests: canned examples served through `tfds.testing.mock_data`, and readers of tasks."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import utils, vocab

Examples = Mapping[tuple[str, str], list[dict[str, Any]]]


class FakeTfds:
  """Serves `data[(builder name[/config], split)]`, recording every read as (name, version, split).

  `exact_keys`: the examples must carry every feature of the real TFDS builder (else a subset suffices);
  builders in `partial_builders` may always leave features out (e.g. MRQA's nested token features).
  """

  def __init__(self, data: Examples, exact_keys: bool = True, partial_builders: tuple[str, ...] = ()):
    self.data, self.exact_keys, self.partial_builders = data, exact_keys, partial_builders
    self.reads: list[tuple[str, str, str]] = []

  def as_dataset_fn(self):
    def as_dataset(builder, split, **unused_kwargs):
      name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
      self.reads.append((name, str(builder.version), split))
      examples = self.data[(name, split)]
      spec = builder.info.features.get_tensor_spec()
      if self.exact_keys and builder.name not in self.partial_builders:
        assert set(examples[0]) == set(spec), f"{name}: example keys must match TFDS"
      else:
        assert set(examples[0]) <= set(spec), f"{name}: {set(examples[0]) - set(spec)} not in TFDS"
      spec = {key: spec[key] for key in examples[0]}
      return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

    return as_dataset


@contextlib.contextmanager
def serving(fake: FakeTfds, vocab_path) -> Iterator[FakeTfds]:
  """The fake TFDS and the real T5 vocabulary, for the duration of the block."""
  vocab.set_vocab_path(vocab_path)
  try:
    with tfds.testing.mock_data(as_dataset_fn=fake.as_dataset_fn()):
      yield fake
  finally:
    vocab.set_vocab_path(None)


def examples(name: str, split: str = "validation") -> list[dict[str, Any]]:
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split=split, shuffle=False, try_in_mem_cache=False)
  return list(dataset.as_numpy_iterator())


def texts(name: str, split: str = "validation") -> list[tuple[str, str]]:
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in examples(name, split)]


def clone_on_rows(name: str, rows: list[dict[str, Any]]) -> str:
  """Registers `name`'s pipeline and evaluation over in-memory rows as a "validation" split (seqio.Evaluator
  needs named splits); returns the clone's name."""
  task = seqio.get_mixture_or_task(name)
  columns = {key: [row[key] for row in rows] for key in rows[0]}
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(columns),
      splits=["validation"])
  clone = f"test_clone_{name}"
  utils.add_task(clone, source=source, preprocessors=task.preprocessors,
                 output_features=task.output_features, postprocess_fn=task.postprocess_fn,
                 metric_fns=task.metric_fns)
  return clone
