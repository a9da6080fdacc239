"""SQuAD and MRQA tasks for the domain-shift experiments; importing registers them.

All use T5's SQuAD format, `"question: <q> context: <c>"` -> first answer, with
punctuation padded by spaces, and the SQuAD metrics (EM/F1, max over answers).
With an optional `mt5_` prefix:

* `squad_v010_allanswers{,_examples}`: TFDS `squad/v1.1:3.0.0`;
* `mrqa_{name}_v100{,_examples}`: TFDS `mrqa/{name}:1.0.0`. For the six
  out-of-domain sets (`OUT_OF_DOMAIN`) seqio's "validation" split reads the TFDS
  "test" split, i.e. the MRQA dev files; the in-domain sets keep their splits;
* mixtures `squad_to_{name}_examples` (train on SQuAD, evaluate on SQuAD and one
  out-of-domain set) and `squad_to_mrqa_examples` (all six);
* `register_mrqa_tsv_task` registers the same task over TSV files.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import seqio

from prompt_tuning.data import features
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

# Paper Table 1: TextbookQA, BioASQ, RACE, RelationExtraction, DuoRC, DROP.
OUT_OF_DOMAIN = ("bio_asq", "drop", "duo_rc", "race", "relation_extraction", "textbook_qa")
IN_DOMAIN = ("news_qa", "trivia_qa", "search_qa", "hotpot_qa", "natural_questions")


FeaturesByModel = Mapping[str, Mapping[str, seqio.Feature]]


def qa_family(base: str, source: seqio.DataSource, text_preprocessor: Callable[..., Any],
              summary_name: str) -> utils.TaskFamily:
  """A SQuAD-format task family evaluated with the SQuAD metrics."""
  return utils.TaskFamily(
      base=base,
      source=source,
      text_preprocessors=[text_preprocessor],
      postprocess_fn=postprocessors.qa,
      metric_fns=[metrics.squad],
      summary_name=summary_name,
      summary_format=metrics.format_qa,
      example_fields=utils.QA_FIELDS)


def _register(family: utils.TaskFamily,
              model_to_features: FeaturesByModel = features.MODEL_TO_FEATURES) -> list[str]:
  # The inputs start with "question:", not a task name, so there is no taskless_ variant.
  return utils.register_task_family(family, variants=("",), model_to_features=model_to_features)


def register_mrqa_tsv_task(
    name: str,
    split_to_filepattern: Mapping[str, str],
    skip_header_lines: int = 1,
    model_to_features: FeaturesByModel | None = None,
) -> list[str]:
  """Registers `{model}{name}` and `{model}{name}_examples` over MRQA-style TSV files.

  Each line holds `id, context, question, answer, answers` separated by tabs,
  with the gold answers joined by "|||" (see `python -m
  prompt_tuning.scripts.mrqa_to_tsv`). Returns the registered task names.
  """
  if not split_to_filepattern:
    raise ValueError(f"{name}: give at least one split, e.g. {{'validation': '/data/DROP.tsv'}}.")
  family = qa_family(
      name,
      seqio.TextLineDataSource(split_to_filepattern=dict(split_to_filepattern),
                               skip_header_lines=skip_header_lines),
      preprocessors.tsv_to_qa, summary_name=name)
  return _register(family, model_to_features or features.MODEL_TO_FEATURES)


def register() -> None:
  """Registers SQuAD, the MRQA sets and the SQuAD -> MRQA mixtures."""
  _register(qa_family("squad_v010_allanswers",
                      seqio.TfdsDataSource(tfds_name="squad/v1.1:3.0.0"),
                      preprocessors.squad_text, summary_name="squad"))
  for name in OUT_OF_DOMAIN + IN_DOMAIN:
    splits = {"validation": "test"} if name in OUT_OF_DOMAIN else None
    _register(qa_family(f"mrqa_{name}_v100",
                        seqio.TfdsDataSource(tfds_name=f"mrqa/{name}:1.0.0", splits=splits),
                        preprocessors.mrqa_text, summary_name=name))
  for model_prefix in features.MODEL_TO_FEATURES:
    squad = f"{model_prefix}squad_v010_allanswers_examples"
    for name in OUT_OF_DOMAIN:
      utils.add_mixture(f"{model_prefix}squad_to_{name}_examples",
                        [squad, f"{model_prefix}mrqa_{name}_v100_examples"], default_rate=1.0)
    utils.add_mixture(f"{model_prefix}squad_to_mrqa_examples",
                      [squad, *(f"{model_prefix}mrqa_{name}_v100_examples" for name in OUT_OF_DOMAIN)],
                      default_rate=1.0)


register()
