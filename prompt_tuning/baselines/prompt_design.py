"""Prompt design (Brown et al. 2020, GPT-3 style): the frozen model reads a text prompt, no training.

`in_context_task` registers a copy of a SeqIO task whose inputs are an instruction, K solved examples from
the train split, then the example's own input. Targets, postprocessing and metrics stay the task's own, so
`python -m prompt_tuning.eval` scores it with the same evaluator as a tuned prompt
(`baselines/prompt_design.gin`).
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prompt_tuning.runtime import input_pipeline

INPUTS_FIELD = "{inputs}"


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _demonstrations(task: seqio.Task, split: str, count: int, seed: int) -> list[tuple[str, str]]:
  """`count` (inputs, targets) texts drawn from `split` with `seed`; rank-classification rows must be correct."""
  if count <= 0:
    return []
  if split not in task.splits:
    raise ValueError(f"Task {task.name!r} has no split {split!r} to draw in-context examples from; "
                     f"choose one of {list(task.splits)}.")
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=True, seed=seed, use_cached=False,
                        num_epochs=1, trim_output_features=False)
  if "inputs_pretokenized" not in ds.element_spec or "targets_pretokenized" not in ds.element_spec:
    raise ValueError(f"Task {task.name!r} keeps no inputs_pretokenized/targets_pretokenized text; prompt design "
                     "needs a task tokenized with seqio.preprocessors.tokenize (copy_pretokenized=True).")
  rows = []
  for ex in ds.as_numpy_iterator():
    if ex.get("is_correct", True):
      rows.append((_text(ex["inputs_pretokenized"]), _text(ex["targets_pretokenized"])))
    if len(rows) == count:
      return rows
  raise ValueError(f"Task {task.name!r} has only {len(rows)} usable {split!r} examples; lower NUM_SHOTS={count}.")


def _keep_last_inputs(dataset: tf.data.Dataset,
                      sequence_length: Mapping[str, int | None] | None = None) -> tf.data.Dataset:
  """Over-long inputs lose their first tokens (the instruction and oldest examples), never the query's end."""
  limit = (sequence_length or {}).get("inputs")
  if limit is None:
    return dataset
  return dataset.map(lambda ex: {**ex, "inputs": ex["inputs"][-limit:]})


def in_context_task(task_name: str, instruction: str = "", num_examples: int = 0,
                    template: str = "{inputs} {targets}", separator: str = "\n", examples_split: str = "train",
                    seed: int = 0, module: str | None = None, name: str | None = None) -> str:
  """Registers `task_name` with a text prompt and returns the new task's name.

  Each input becomes: `instruction`, then `num_examples` solved examples from `examples_split` (drawn with
  `seed`) written with `template`, then the input written with `template` and empty `{targets}`, joined by
  `separator`. The name defaults to `<task_name>_prompt_design_<num_examples>shot`; registering it again
  replaces it.
  """
  base = input_pipeline.get_task_or_mixture(task_name, module)
  if not isinstance(base, seqio.Task):
    raise ValueError(f"{task_name!r} is a mixture; prompt design takes one task (its train split supplies the "
                     "in-context examples).")
  if template.count(INPUTS_FIELD) != 1:
    raise ValueError(f"template={template!r} must contain {INPUTS_FIELD} exactly once (and may use {{targets}}).")
  demos = [template.format(inputs=x, targets=y) for x, y in _demonstrations(base, examples_split, num_examples, seed)]
  before, after = template.format(inputs="\0", targets="").split("\0")
  head = separator.join(([instruction] if instruction else []) + demos + [before])
  tail = after.rstrip()
  feature = base.output_features["inputs"]

  def with_prompt(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    text = tf.strings.join([head, ex["inputs_pretokenized"], tail])
    tokens = feature.vocabulary.encode_tf(text)
    if feature.add_eos:
      tokens = tf.concat([tokens, [feature.vocabulary.eos_id]], axis=0)
    return {**ex, "inputs": tokens, "inputs_pretokenized": text}

  def examples(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
    ds = base.get_dataset(sequence_length=None, split=split, shuffle=shuffle_files, seed=seed, use_cached=False,
                          num_epochs=1, trim_output_features=False)
    return ds.map(with_prompt)

  name = name or f"{task_name}_prompt_design_{num_examples}shot"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(examples, splits=list(base.splits)),
                         output_features=base.output_features, preprocessors=[_keep_last_inputs],
                         postprocess_fn=base.postprocessor, metric_objs=base.metric_objs)
  return name
