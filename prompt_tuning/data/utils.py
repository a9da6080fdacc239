"""Helpers to register task families in every naming variant.

A task name is `{model}{variant}{base}{suffix}`:

* model: "" (T5 vocabulary) or "mt5_" (see `features.MODEL_TO_FEATURES`);
* variant: "" (T5's text, starting with the dataset name, e.g. "rte ..."),
  "taskless_" (that first word removed: the paper's "no task name" setting) or
  "task_index_" (taskless, plus the token `<extra_id_{index}>` prepended after
  tokenization, the index being the task's alphabetical position);
* base: e.g. "super_glue_rte_v102", "glue_sst2_v200", "squad_v010_allanswers";
* suffix: "" (T5's postprocessing and metrics), "_examples" (the same metrics,
  plus "<task> samples" text summaries for TensorBoard) or
  "_rank_classification" (one example per label, scored, see
  `metrics.rank_classification`).

`with_sentinel(family)` is the family whose base ends in "_sentinel": every
target starts with `<extra_id_0>`, as span-corruption targets do (the paper's
"span corruption + sentinel"), and the sentinel is removed from the model's
output before the metrics.

Registration replaces an existing task or mixture of the same name, so
importing or reloading a module twice is harmless; it never reads data.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import seqio

from prompt_tuning.data import features
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors

VARIANTS = ("", "taskless_", "task_index_")
EXAMPLES = "_examples"
RANK_CLASSIFICATION = "_rank_classification"
SENTINEL = "_sentinel"
CLASSIFICATION_FIELDS = (postprocessors.INPUT_TEXT, postprocessors.TARGET_TEXT)
QA_FIELDS = (postprocessors.TARGET_TEXT, postprocessors.CONTEXT_TEXT,
             postprocessors.QUESTION_TEXT, postprocessors.ANSWERS_TEXT)


def task_mapping(tasks: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, int]:
  """Task name -> index in the sorted task names; each alias gets its target's index.

  Aliases are left out of the sorting (e.g. GLUE's "ax" is scored as "mnli").
  """
  aliases = dict(aliases or {})
  index = {task: i for i, task in enumerate(sorted(set(tasks) - set(aliases)))}
  for alias, target in aliases.items():
    if target not in index:
      raise ValueError(f"Alias {alias!r} points to {target!r}, which is not one of {sorted(index)}.")
    index[alias] = index[target]
  return index


def add_task(name: str, **task_kwargs: Any) -> seqio.Task:
  """`seqio.TaskRegistry.add`, replacing any task already registered as `name`."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **task_kwargs)


def add_mixture(name: str, tasks: Sequence[Any], **mixture_kwargs: Any) -> seqio.Mixture:
  """`seqio.MixtureRegistry.add`, replacing any mixture already registered as `name`."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, **mixture_kwargs)


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  """One dataset in T5's text format, registered in several naming variants.

  Attributes:
    base: the name without model prefix, variant or suffix, e.g. "glue_rte_v002".
    source: where the raw examples come from.
    text_preprocessors: raw example -> `{"inputs", "targets", ...}` strings.
    postprocess_fn: T5's postprocessor (None: the task has no evaluation).
    metric_fns: T5's metrics, on postprocessed targets and predictions.
    summary_name: the `<name>` in the "<name> samples" text summaries.
    task_index: the sentinel offset of the `task_index_` variant.
    label_names: the label strings, for the rank classification variant.
    summary_format: `metrics.format_classification` or `metrics.format_qa`.
    example_fields: example fields copied into the `_examples` prediction dicts.
    token_preprocessors: steps on the tokenized example (after tokenization
      and the task index), e.g. `preprocessors.add_target_sentinel`.
  """
  base: str
  source: seqio.DataSource
  text_preprocessors: Sequence[Callable[..., Any]]
  postprocess_fn: Callable[..., Any] | None = None
  metric_fns: Sequence[Callable[..., Any]] = ()
  summary_name: str = ""
  task_index: int | None = None
  label_names: Sequence[str] | None = None
  summary_format: Callable[..., str] = metrics.format_classification
  example_fields: Sequence[str] = CLASSIFICATION_FIELDS
  token_preprocessors: Sequence[Callable[..., Any]] = ()


def with_sentinel(family: TaskFamily) -> TaskFamily:
  """`family` with `<extra_id_0>` before every target, removed from outputs before postprocessing."""
  postprocess_fn = family.postprocess_fn
  if postprocess_fn is not None:
    postprocess_fn = postprocessors.sequential(postprocessors.remove_sentinel, postprocess_fn)
  return dataclasses.replace(
      family, base=family.base + SENTINEL, postprocess_fn=postprocess_fn,
      token_preprocessors=(*family.token_preprocessors, preprocessors.add_target_sentinel))


def _preprocessors(family: TaskFamily, variant: str, suffix: str) -> list[Callable[..., Any]]:
  steps = list(family.text_preprocessors)
  if variant in ("taskless_", "task_index_"):
    steps.append(preprocessors.remove_first_text_token)
  if suffix == RANK_CLASSIFICATION:
    steps.append(functools.partial(preprocessors.rank_classification,
                                   label_names=family.label_names))
  steps.append(seqio.preprocessors.tokenize)
  if variant == "task_index_":
    steps.append(functools.partial(preprocessors.add_sentinel_to_beginning,
                                   field="inputs", offset=family.task_index))
  steps += [*family.token_preprocessors, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]
  return steps


def _evaluation(family: TaskFamily, suffix: str) -> tuple[Callable[..., Any] | None, list[Any]]:
  """The (postprocess_fn, metric_fns) of `family` with `suffix`."""
  if suffix == RANK_CLASSIFICATION:
    return postprocessors.rank_classification, [
        functools.partial(metrics.rank_classification, num_classes=len(family.label_names))]
  if suffix == EXAMPLES and family.postprocess_fn is not None:
    postprocess_fn = functools.partial(postprocessors.postprocess_with_examples,
                                       family.postprocess_fn,
                                       example_fields=tuple(family.example_fields))
    metric_fns = [functools.partial(metrics.metric_with_examples, fn) for fn in family.metric_fns]
    metric_fns.append(functools.partial(metrics.text_examples, task_name=family.summary_name,
                                        format_fn=family.summary_format))
    return postprocess_fn, metric_fns
  return family.postprocess_fn, list(family.metric_fns)


def register_task_family(
    family: TaskFamily,
    variants: Sequence[str] = VARIANTS,
    suffixes: Sequence[str] = ("", EXAMPLES),
    model_to_features: Mapping[str, Mapping[str, seqio.Feature]] = features.MODEL_TO_FEATURES,
) -> list[str]:
  """Registers `{model}{variant}{family.base}{suffix}` for every combination.

  Returns the registered names.
  """
  if "task_index_" in variants and family.task_index is None:
    raise ValueError(f"{family.base}: the task_index_ variant needs TaskFamily.task_index.")
  if RANK_CLASSIFICATION in suffixes and not family.label_names:
    raise ValueError(f"{family.base}: rank classification needs TaskFamily.label_names.")
  names = []
  for model_prefix, output_features in model_to_features.items():
    for variant in variants:
      for suffix in suffixes:
        name = f"{model_prefix}{variant}{family.base}{suffix}"
        postprocess_fn, metric_fns = _evaluation(family, suffix)
        add_task(name, source=family.source,
                 preprocessors=_preprocessors(family, variant, suffix),
                 output_features=output_features, postprocess_fn=postprocess_fn,
                 metric_fns=metric_fns)
        names.append(name)
  return names
