"""Metric functions with the `t5` library's definitions, plus text summaries.

Every metric takes `(targets, predictions)` (or `(targets, scores)` for the
score-driven rank classification) and returns a dict of values; scores are in
percent like T5's. Class ids of -1 (a prediction outside the label set) never
equal a target, so they count as wrong.
"""
from __future__ import annotations

import collections
import itertools
import random
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.stats
import seqio

from prompt_tuning.data import postprocessors

MetricFn = Callable[..., Mapping[str, Any]]


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f"Got {len(targets)} targets but {len(predictions)} predictions; they must pair up.")


# ========== Classification ==========
def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percent of predictions equal to their target."""
  _check_lengths(targets, predictions)
  return {"accuracy": 100 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _f1(is_true: np.ndarray, is_predicted: np.ndarray, weights: np.ndarray) -> float:
  """F1 of one class from boolean indicators (0 when it is never true nor predicted)."""
  tp = np.sum(weights * (is_true & is_predicted))
  wrong = np.sum(weights * (is_true != is_predicted))
  return float(2 * tp / (2 * tp + wrong)) if tp > 0 else 0.0


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 of class 1, where a prediction other than 0/1 is made wrong (1 - target)."""
  _check_lengths(targets, predictions)
  targets = np.asarray(targets)
  predictions = np.array(predictions)
  invalid = (predictions != 0) & (predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  return {"f1": 100 * _f1(targets == 1, predictions == 1, np.ones(len(targets)))}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Unweighted mean over classes 0..num_classes-1 of the per-class F1 (CB)."""

  def metric(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    weights = np.ones(len(targets))
    f1s = [_f1(targets == c, predictions == c, weights) for c in range(num_classes)]
    return {f"mean_{num_classes}class_f1": 100 * float(np.mean(f1s))}

  return metric


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation x100 (multiclass form over every label seen; 0 if undefined)."""
  _check_lengths(targets, predictions)
  labels, encoded = np.unique(np.concatenate([targets, predictions]), return_inverse=True)
  truth, predicted = encoded[:len(targets)], encoded[len(targets):]
  confusion = np.zeros((len(labels), len(labels)))
  np.add.at(confusion, (truth, predicted), 1)
  true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  total, correct = confusion.sum(), np.trace(confusion)
  covariance = correct * total - true_counts @ predicted_counts
  variance_true = total**2 - true_counts @ true_counts
  variance_predicted = total**2 - predicted_counts @ predicted_counts
  denominator = np.sqrt(variance_true * variance_predicted)
  return {"matthews_corrcoef": 100 * float(covariance / denominator) if denominator else 0.0}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  return {"pearson_corrcoef": 100 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  return {"spearman_corrcoef": 100 * float(scipy.stats.spearmanr(targets, predictions)[0])}


# ========== Grouped metrics (MultiRC, ReCoRD) ==========
def all_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """100 if every prediction equals its target, else 0."""
  return {"exact_match": 100 * float(np.array_equal(targets, predictions))}


def mean_group_metric(metric_fn: MetricFn, group_key: str = "group",
                      value_key: str = "value") -> MetricFn:
  """Averages `metric_fn` over groups of `{"group", "value"}` targets (MultiRC EM)."""

  def metric(targets, predictions):
    _check_lengths(targets, predictions)
    groups = collections.defaultdict(lambda: ([], []))
    for target, prediction in zip(targets, predictions):
      group_targets, group_predictions = groups[target[group_key]]
      group_targets.append(target[value_key])
      group_predictions.append(prediction[value_key])
    scores = collections.defaultdict(list)
    for group_targets, group_predictions in groups.values():
      for name, value in metric_fn(group_targets, group_predictions).items():
        scores[name].append(value)
    return {name: float(np.mean(values)) for name, values in scores.items()}

  return metric


def deduplicate_metric(metric_fn: MetricFn, group_key: str = "group",
                       value_key: str = "value") -> MetricFn:
  """Scores only the first example of each group (ReCoRD repeats one per answer)."""

  def metric(targets, predictions):
    _check_lengths(targets, predictions)
    seen, kept_targets, kept_predictions = set(), [], []
    for target, prediction in zip(targets, predictions):
      if target[group_key] in seen:
        continue
      seen.add(target[group_key])
      kept_targets.append(target[value_key])
      kept_predictions.append(prediction[value_key])
    return metric_fn(kept_targets, kept_predictions)

  return metric


def multirc_f1_over_all_answers(targets: Sequence[Mapping[str, int]],
                                predictions: Sequence[Mapping[str, int]]) -> dict[str, float]:
  """MultiRC F1a: `f1_score_with_invalid` over every answer option."""
  return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


# ========== SQuAD-style QA ==========
_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str) -> str:
  """The official SQuAD normalisation: lower, drop punctuation and articles, squash spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  common = collections.Counter(prediction.split()) & collections.Counter(target.split())
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(prediction.split()), overlap / len(target.split())
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match and token F1 (x100), each the max over an example's answers."""
  _check_lengths(targets, predictions)
  exact, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    answers, prediction = [normalize_squad(a) for a in answers], normalize_squad(prediction)
    exact.append(max(float(a == prediction) for a in answers))
    f1.append(max(_token_f1(a, prediction) for a in answers))
  return {"em": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}


# ========== Rank classification (driven by scores) ==========
# ========== Summarization ==========
ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ROUGE_KEYS) -> dict[str, float]:
  """T5's ROUGE: F-measures (percent, the bootstrap median) of `rouge_score` without stemming; " . " becomes a
  line break first, so that rougeLsum sees sentences."""
  from rouge_score import rouge_scorer, scoring  # pylint: disable=import-outside-toplevel
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(score_keys))
  aggregator = scoring.BootstrapAggregator()
  as_lines = lambda text: text.replace(" . ", " .\n")
  for target, prediction in zip(targets, predictions):
    aggregator.add_scores(scorer.score(target=as_lines(target), prediction=as_lines(prediction)))
  result = aggregator.aggregate()
  return {key: 100 * float(result[key].mid.fmeasure) for key in score_keys}


def _roc_and_pr_auc(is_positive: np.ndarray, scores: np.ndarray,
                    weights: np.ndarray) -> tuple[float, float]:
  """Area under the ROC curve and average precision, as sklearn computes them."""
  order = np.argsort(-scores, kind="mergesort")
  scores, is_positive, weights = scores[order], is_positive[order], weights[order]
  last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  true_positives = np.cumsum(weights * is_positive)[last_of_threshold]
  false_positives = np.cumsum(weights * ~is_positive)[last_of_threshold]
  if true_positives[-1] == 0 or false_positives[-1] == 0:
    return float("nan"), float("nan")
  tpr = np.r_[0.0, true_positives] / true_positives[-1]
  fpr = np.r_[0.0, false_positives] / false_positives[-1]
  roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
  precision = true_positives / (true_positives + false_positives)
  average_precision = float(np.sum(np.diff(tpr) * precision))
  return roc_auc, average_precision


def rank_classification(targets: Sequence[tuple[Sequence[int], bool, float, int]],
                        scores: Sequence[float],
                        num_classes: int | None = None) -> dict[str, float]:
  """Classification by picking the best-scored label of each example.

  `targets` come from `postprocessors.rank_classification`: `(idx, is_correct,
  weight, target length)` with `idx = (example, label)`; `scores` are the
  log-likelihoods of each (example, label) pair. Reports accuracy; with a fixed
  `num_classes` also F1 (class 1, plus AUC-ROC/AUC-PR for two classes) or the
  mean per-class F1. With several correct labels, any of them counts.
  """
  _check_lengths(targets, scores)
  pairs = sorted(zip(targets, scores), key=lambda pair: tuple(pair[0][0]))
  if not num_classes:
    correct = total = 0.0
    for _, group in itertools.groupby(pairs, key=lambda pair: pair[0][0][0]):
      group = list(group)
      (_, is_correct, weight, _), _ = group[int(np.argmax([s for _, s in group]))]
      correct += is_correct * weight
      total += weight
    return {"accuracy": 100 * correct / total}
  if len(pairs) % num_classes:
    raise ValueError(f"{len(pairs)} scored labels do not split into {num_classes} per example.")
  is_correct = np.array([t[1] for t, _ in pairs], dtype=bool).reshape(-1, num_classes)
  weights = np.array([t[2] for t, _ in pairs], dtype=float).reshape(-1, num_classes)[:, 0]
  log_likelihoods = np.array([s for _, s in pairs], dtype=np.float32).reshape(-1, num_classes)
  predicted = np.eye(num_classes, dtype=bool)[log_likelihoods.argmax(-1)]
  results = {"accuracy": 100 * float(np.average(np.any(is_correct & predicted, -1),
                                                 weights=weights))}
  if np.any(is_correct.sum(-1) > 1):
    return results
  if num_classes > 2:
    f1s = [_f1(is_correct[:, c], predicted[:, c], weights) for c in range(num_classes)]
    results[f"mean_{num_classes}class_f1"] = 100 * float(np.mean(f1s))
    return results
  results["f1"] = 100 * _f1(is_correct[:, 1], predicted[:, 1], weights)
  shifted = np.exp(log_likelihoods - log_likelihoods.max(-1, keepdims=True))
  roc_auc, average_precision = _roc_and_pr_auc(
      is_correct[:, 1], shifted[:, 1] / shifted.sum(-1), weights)
  results.update({"auc-roc": 100 * roc_auc, "auc-pr": 100 * average_precision})
  return results


# ========== Prediction dicts and text summaries (`_examples` tasks) ==========
def metric_with_examples(metric_fn: MetricFn, targets: Sequence[Any],
                         predictions: Sequence[Mapping[str, Any]],
                         prediction_field: str = postprocessors.PREDICTION) -> Mapping[str, Any]:
  """Runs `metric_fn` on the postprocessed values inside the prediction dicts."""
  return metric_fn(targets, [p[prediction_field] for p in predictions])


def format_classification(indices: Sequence[int], examples: Sequence[Mapping[str, Any]],
                          input_field: str = postprocessors.INPUT_TEXT,
                          target_field: str = postprocessors.TARGET_TEXT,
                          prediction_field: str = postprocessors.PREDICTION_TEXT,
                          **unused_kwargs) -> str:
  """Markdown paragraphs: input, target and raw prediction of each chosen example."""
  texts = []
  for i in indices:
    ex = examples[i]
    texts.append(f"example: {postprocessors.as_text(ex[input_field])}\n\n"
                 f"target: {postprocessors.as_text(ex[target_field])}\n\n"
                 f"prediction: {postprocessors.as_text(ex[prediction_field])}")
  return "\n\n\n".join(texts)


def format_qa(indices: Sequence[int], examples: Sequence[Mapping[str, Any]],
              context_field: str | None = postprocessors.CONTEXT_TEXT,
              question_field: str = postprocessors.QUESTION_TEXT,
              answers_field: str = postprocessors.ANSWERS_TEXT,
              prediction_field: str = postprocessors.PREDICTION_TEXT,
              **unused_kwargs) -> str:
  """Context (if any), question, sorted unique answers and raw prediction per example."""
  texts = []
  for i in indices:
    ex = examples[i]
    answers = sorted({postprocessors.as_text(a) for a in ex[answers_field]})
    lines = [f"question: {postprocessors.as_text(ex[question_field])}",
             f"answers: {'; '.join(answers)}",
             f"prediction: {postprocessors.as_text(ex[prediction_field])}"]
    if context_field:
      lines.insert(0, f"context: {postprocessors.as_text(ex[context_field])}")
    texts.append("\n".join(lines))
  return "\n\n".join(texts)


def safe_sample(num_examples: int, population: Sequence[Any],
                seed: int | None = None) -> Sequence[int]:
  """Up to `num_examples` random indices into `population` (-1: all, in order)."""
  if num_examples == -1 or num_examples >= len(population):
    return range(len(population))
  return random.Random(seed).sample(range(len(population)), k=num_examples)


def _value(x: Any) -> Any:
  return x.get("value") if isinstance(x, Mapping) else x


def _is_correct(prediction: Any, target: Any) -> bool:
  """Whether a postprocessed prediction matches its target (any of a list of answers)."""
  prediction, target = _value(prediction), _value(target)
  if isinstance(target, (list, tuple)):
    return prediction in target
  return prediction == target


def text_examples(targets: Sequence[Any], predictions: Sequence[Mapping[str, Any]],
                  task_name: str, num_examples: int = 8, seed: int | None = None,
                  find_negative: bool = True,
                  format_fn: Callable[..., str] = format_classification,
                  prediction_field: str = postprocessors.PREDICTION,
                  **format_kwargs) -> dict[str, seqio.metrics.Text]:
  """TensorBoard text: `"{task_name} samples"` and `"{task_name} negative samples"`.

  `predictions` are dicts from `postprocessors.postprocess_with_examples`; the
  negative samples are those whose postprocessed prediction misses the target.
  `format_kwargs` (e.g. `input_field`) are passed to `format_fn`.
  """
  _check_lengths(targets, predictions)
  results = {f"{task_name} samples": seqio.metrics.Text(
      textdata=format_fn(safe_sample(num_examples, predictions, seed), predictions,
                         **format_kwargs))}
  if find_negative:
    wrong = [p for p, t in zip(predictions, targets) if not _is_correct(p[prediction_field], t)]
    results[f"{task_name} negative samples"] = seqio.metrics.Text(
        textdata=format_fn(safe_sample(num_examples, wrong, seed), wrong, **format_kwargs))
  return results
