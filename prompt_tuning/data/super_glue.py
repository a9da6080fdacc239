"""SuperGLUE tasks in T5's text format; importing this module registers them.

All read TFDS `super_glue/{name}:1.0.2`. With an optional `mt5_` prefix:

* `{,taskless_,task_index_}super_glue_{name}_v102{,_examples}` for boolq, cb,
  copa, multirc, record, rte, wic and the test-only diagnostics axb, axg;
* `{,taskless_,task_index_}super_glue_{name}_v102_rank_classification` for the
  labelled classification datasets (boolq, cb, copa, multirc, rte, wic);
* WSC as T5's generative "simple" task: `..._super_glue_wsc_v102_simple_train`
  (correct referents only) and `..._simple_eval` (validation and test), both with
  `_examples` too, and the mixtures `{,taskless_,task_index_}super_glue_wsc_and_dev_v102_simple{,_examples}`;
* Definite Pronoun Resolution in the same format:
  `{,taskless_,task_index_}dpr_v001_simple{,_examples}`;
* every task and the WSC mixtures also as `..._sentinel` (before any `_examples`
  / `_rank_classification` suffix): `<extra_id_0>` starts each target, as in
  span corruption (the paper's "span corruption + sentinel"), and is removed
  from the model's output before the metrics, e.g.
  `taskless_super_glue_rte_v102_sentinel_examples`;
* `task_index_super_glue_v102_examples_proportional` and
  `task_index_super_glue_with_dpr_v102_examples_proportional`: all tasks, mixed
  in proportion to their training-set sizes.

Example: `taskless_super_glue_rte_v102` ("hypothesis: ... premise: ..." ->
"entailment").
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import seqio

from prompt_tuning.data import features
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

TFDS_VERSION = "1.0.2"

# Label names by class id, as in the TFDS builder configs (record is free text).
LABELS: dict[str, Sequence[str] | None] = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "record": None,
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
TEST_ONLY = ("axb", "axg")
# T5 orders these features explicitly instead of alphabetically (wic ignores its
# word offsets).
FEATURE_ORDER = {"multirc": ("question", "answer", "paragraph"),
                 "wic": ("sentence1", "sentence2", "word")}

METRICS: dict[str, list[Callable[..., Any]]] = {
    "boolq": [metrics.accuracy],
    "cb": [metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy],
    "copa": [metrics.accuracy],
    "multirc": [metrics.multirc_f1_over_all_answers,
                metrics.mean_group_metric(metrics.all_match)],
    "record": [metrics.deduplicate_metric(metrics.squad)],
    "rte": [metrics.accuracy],
    "wic": [metrics.accuracy],
    "axb": [],
    "axg": [],
}

# The diagnostics are scored as RTE; wsc.fixed (and DPR) share WSC's index.
TASK_INDEX = utils.task_mapping(
    (*LABELS, "wsc", "wsc.fixed"), {"wsc.fixed": "wsc", "axb": "rte", "axg": "rte"})

# Training-set sizes, T5's mixing weights for the proportional mixtures.
EXAMPLE_COUNTS = {"boolq": 9_427, "cb": 250, "copa": 400, "multirc": 27_243,
                  "record": 138_854, "rte": 2_490, "wic": 5_428, "wsc": 259, "dpr": 1_322}


def _source(config: str, splits: Sequence[str] | None = None) -> seqio.TfdsDataSource:
  return seqio.TfdsDataSource(tfds_name=f"super_glue/{config}:{TFDS_VERSION}", splits=splits)


def text_preprocessors(name: str) -> list[Callable[..., Any]]:
  """T5's text format of SuperGLUE dataset `name` (axb/axg formatted as RTE)."""
  if name == "record":
    return [preprocessors.record_text]
  steps = []
  if name == "axb":
    steps.append(functools.partial(seqio.preprocessors.rekey, key_map={
        "premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"}))
  steps.append(functools.partial(
      preprocessors.glue_text, benchmark_name="rte" if name in TEST_ONLY else name,
      label_names=LABELS[name], feature_names=FEATURE_ORDER.get(name)))
  return steps


def postprocess_fn(name: str) -> Callable[..., Any]:
  if name == "multirc":
    return postprocessors.multirc
  if name == "record":
    return postprocessors.record
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=LABELS[name])


def task_family(name: str) -> utils.TaskFamily:
  """The SuperGLUE classification/QA dataset `name` (not WSC)."""
  return utils.TaskFamily(
      base=f"super_glue_{name}_v102",
      source=_source(name, ["test"] if name in TEST_ONLY else None),
      text_preprocessors=text_preprocessors(name),
      postprocess_fn=postprocess_fn(name),
      metric_fns=METRICS[name],
      summary_name=name,
      task_index=TASK_INDEX[name],
      label_names=LABELS[name])


def wsc_families() -> tuple[utils.TaskFamily, utils.TaskFamily]:
  """WSC simple: train on correct referents only; evaluate on all examples."""
  train = utils.TaskFamily(
      base="super_glue_wsc_v102_simple_train",
      source=_source("wsc.fixed", ["train"]),
      text_preprocessors=[functools.partial(preprocessors.wsc_simple_text,
                                            correct_referent_only=True)],
      task_index=TASK_INDEX["wsc.fixed"])
  evaluation = utils.TaskFamily(
      base="super_glue_wsc_v102_simple_eval",
      source=_source("wsc.fixed", ["validation", "test"]),
      text_preprocessors=[preprocessors.wsc_simple_text],
      postprocess_fn=postprocessors.wsc_simple,
      metric_fns=[metrics.accuracy],
      summary_name="wsc",
      task_index=TASK_INDEX["wsc.fixed"])
  return train, evaluation


def dpr_family() -> utils.TaskFamily:
  """Definite Pronoun Resolution (TFDS 1.1.0) as WSC simple: text -> referent."""
  return utils.TaskFamily(
      base="dpr_v001_simple",
      source=seqio.TfdsDataSource(tfds_name="definite_pronoun_resolution:1.1.0"),
      text_preprocessors=[preprocessors.dpr_simple_text],
      postprocess_fn=postprocessors.identity,
      metric_fns=[metrics.accuracy],
      summary_name="dpr",
      task_index=TASK_INDEX["wsc"])


def _register_mixtures(model_prefix: str) -> None:
  for variant in utils.VARIANTS:
    for sentinel in ("", utils.SENTINEL):
      for suffix in ("", utils.EXAMPLES):
        utils.add_mixture(
            f"{model_prefix}{variant}super_glue_wsc_and_dev_v102_simple{sentinel}{suffix}",
            [f"{model_prefix}{variant}super_glue_wsc_v102_simple_{split}{sentinel}{suffix}"
             for split in ("train", "eval")],
            default_rate=1.0)
  weights = [(f"{model_prefix}task_index_super_glue_{name}_v102_examples", float(count))
             for name, count in EXAMPLE_COUNTS.items() if name not in ("wsc", "dpr")]
  weights += [(f"{model_prefix}task_index_super_glue_wsc_v102_simple_train",
               float(EXAMPLE_COUNTS["wsc"])),
              (f"{model_prefix}task_index_super_glue_wsc_v102_simple_eval_examples", 0.0)]
  utils.add_mixture(f"{model_prefix}task_index_super_glue_v102_examples_proportional", weights)
  utils.add_mixture(
      f"{model_prefix}task_index_super_glue_with_dpr_v102_examples_proportional",
      [(f"{model_prefix}task_index_dpr_v001_simple_examples", float(EXAMPLE_COUNTS["dpr"])),
       *weights])


def register() -> None:
  """Registers every SuperGLUE, WSC and DPR task and mixture (replacing older ones), each also with the
  sentinel before its targets (`..._sentinel`, see `utils.with_sentinel`)."""
  for plain in (*(task_family(name) for name in LABELS), *wsc_families(), dpr_family()):
    for family in (plain, utils.with_sentinel(plain)):
      utils.register_task_family(family)
      if family.label_names and family.metric_fns:
        utils.register_task_family(family, suffixes=(utils.RANK_CLASSIFICATION,))
  for model_prefix in features.MODEL_TO_FEATURES:
    _register_mixtures(model_prefix)


register()
