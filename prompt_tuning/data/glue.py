"""GLUE tasks in T5's text format; importing this module registers them.

For each GLUE dataset `{name}` and version (`v002` = TFDS `glue/{name}:1.0.0`,
`v200` = `glue/{name}:2.0.0`), with an optional `mt5_` prefix:

* `glue_{name}_{ver}`, `taskless_glue_{name}_{ver}`, `task_index_glue_{name}_{ver}`
  and each of them with `_examples` (text summaries of predictions);
* `{,taskless_,task_index_}glue_{name}_{ver}_rank_classification` for the
  labelled classification datasets (all but stsb and the test-only ax);
* mixtures `{,taskless_,task_index_}glue_mnli_and_dev_{ver}{,_examples}`:
  MNLI train plus the matched and mismatched validation sets.

Example: `taskless_glue_sst2_v200_examples` ("sentence: ..." -> "positive").
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

VERSIONS = {"v002": "1.0.0", "v200": "2.0.0"}

_MNLI_LABELS = ("entailment", "neutral", "contradiction")
# Label names by class id, as in the TFDS builder configs (stsb is a regression).
LABELS: dict[str, Sequence[str] | None] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,
    "mnli": _MNLI_LABELS,
    "mnli_mismatched": _MNLI_LABELS,
    "mnli_matched": _MNLI_LABELS,
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "ax": _MNLI_LABELS,
}
TEST_ONLY = ("ax",)

METRICS: dict[str, list[Callable[..., Any]]] = {
    "cola": [metrics.matthews_corrcoef],
    "sst2": [metrics.accuracy],
    "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
    "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
    "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    "mnli": [metrics.accuracy],
    "mnli_mismatched": [metrics.accuracy],
    "mnli_matched": [metrics.accuracy],
    "qnli": [metrics.accuracy],
    "rte": [metrics.accuracy],
    "wnli": [metrics.accuracy],
    "ax": [],
}

# The MNLI diagnostics and dev sets share MNLI's task index.
TASK_INDEX = utils.task_mapping(
    tuple(LABELS), {"ax": "mnli", "mnli_mismatched": "mnli", "mnli_matched": "mnli"})


def text_preprocessor(name: str) -> Callable[..., Any]:
  """T5's text format of GLUE dataset `name` (all MNLI sets and ax read as "mnli")."""
  if name == "stsb":
    return preprocessors.stsb_text
  benchmark = "mnli" if "mnli" in name or name == "ax" else name
  return functools.partial(preprocessors.glue_text, benchmark_name=benchmark,
                           label_names=LABELS[name])


def postprocess_fn(name: str) -> Callable[..., Any]:
  """Prediction text -> float for stsb, else class id (-1 outside the label set)."""
  if name == "stsb":
    return postprocessors.string_to_float
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=LABELS[name])


def task_family(name: str, version: str) -> utils.TaskFamily:
  """The GLUE dataset `name` at task version `version` ("v002" or "v200")."""
  return utils.TaskFamily(
      base=f"glue_{name}_{version}",
      source=seqio.TfdsDataSource(tfds_name=f"glue/{name}:{VERSIONS[version]}",
                                  splits=["test"] if name in TEST_ONLY else None),
      text_preprocessors=[text_preprocessor(name)],
      postprocess_fn=postprocess_fn(name),
      metric_fns=METRICS[name],
      summary_name=name,
      task_index=TASK_INDEX[name],
      label_names=LABELS[name])


def register() -> None:
  """Registers every GLUE task and the MNLI mixtures (replacing older registrations)."""
  for version in VERSIONS:
    for name in LABELS:
      family = task_family(name, version)
      utils.register_task_family(family)
      if family.label_names and family.metric_fns:
        utils.register_task_family(family, suffixes=(utils.RANK_CLASSIFICATION,))
    for model_prefix in features.MODEL_TO_FEATURES:
      for variant in utils.VARIANTS:
        for suffix in ("", utils.EXAMPLES):
          utils.add_mixture(
              f"{model_prefix}{variant}glue_mnli_and_dev_{version}{suffix}",
              [f"{model_prefix}{variant}glue_{name}_{version}{suffix}"
               for name in ("mnli", "mnli_mismatched", "mnli_matched")],
              default_rate=1.0)


register()
