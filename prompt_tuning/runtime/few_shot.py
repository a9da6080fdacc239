"""Few-shot training subsets: k examples per class (or k in all) of a task's split, chosen by a seeded hash.

Each example of the split (after the task's preprocessing) gets the key sha256(seed, its content: the text
features `*_pretokenized` when the task keeps them, else every feature); per class (its target text) the k
examples with the smallest keys are kept. The choice depends only on the task's
examples, k and the seed: not on their order, the number of hosts or when the run starts, so every host selects
the same subset from the whole split before the stream is sharded, and a restarted run trains on the same subset
(the training loop's saved position then restores where it was in the stream, as for any task).

The stream: the subset is shuffled (seeded, reshuffled every epoch), repeated, then example i goes to host
i mod num_hosts, so the global batch is the same for any number of hosts. Selection reads the whole split once
per process (a few seconds for thousands of examples); a postcache preprocessor that is random (span
corruption) is drawn once with the seed, so the subset's texts are fixed too.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import logging
from typing import Any, Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError

RECORD_FILE = "few_shot.json"  # in MODEL_DIR: the subset a run trains on
LABEL_FEATURE = "targets"  # what defines an example's class: its target text (pretokenized when present)
MAX_CLASSES = 100  # more distinct targets than this: per-class sampling of a generative task is a mistake


class FewShotError(UserError):
  """A few-shot setting that cannot be met; the message names the macro to change."""


@dataclasses.dataclass(frozen=True)
class Subset:
  """The examples kept of one task's split, in a fixed order (class, then key)."""

  task: str
  split: str
  k: int
  seed: int
  per_class: bool
  examples: tuple[Mapping[str, np.ndarray], ...]
  counts: Mapping[str, int]  # class -> examples kept ("*" when not per class)
  fingerprint: str  # sha256 of the kept examples' keys in order
  element_spec: Any = dataclasses.field(repr=False, compare=False, default=None)

  def record(self) -> dict[str, Any]:
    """What a run writes down to check, when it resumes, that it trains on the same subset."""
    return {"task": self.task, "split": self.split, "k": self.k, "seed": self.seed, "per_class": self.per_class,
            "examples": len(self.examples), "counts": dict(self.counts), "fingerprint": self.fingerprint}


def example_key(example: Mapping[str, Any], seed: int) -> bytes:
  """sha256 of the seed and the example's text features' (else every feature's) names and values: the same
  example gets the same key anywhere, whatever the feature lengths truncate."""
  h = hashlib.sha256(f"few-shot seed {int(seed)}".encode())
  names = sorted(n for n in example if n.endswith("_pretokenized")) or sorted(example)
  for name in names:
    value = np.asarray(example[name])
    h.update(name.encode() + b"\0" + str(value.dtype).encode() + str(value.shape).encode())
    h.update(value.tobytes() if value.dtype != object else b"\0".join(_bytes(v) for v in value.ravel()))
  return h.digest()


def _bytes(value: Any) -> bytes:
  return value if isinstance(value, bytes) else str(value).encode()


def class_of(example: Mapping[str, Any]) -> str:
  """An example's class: its target text, or its target token ids when the task keeps no text."""
  text = example.get(f"{LABEL_FEATURE}_pretokenized")
  if text is not None:
    return _bytes(text.item() if isinstance(text, np.ndarray) else text).decode("utf-8", "replace")
  if LABEL_FEATURE not in example:
    raise FewShotError(f"FEW_SHOT_PER_CLASS=True needs a {LABEL_FEATURE!r} feature to tell the classes apart; "
                       f"the examples have {sorted(example)}. Set FEW_SHOT_PER_CLASS=False (k examples in all).")
  return "ids:" + ",".join(str(int(t)) for t in np.asarray(example[LABEL_FEATURE]).ravel())


@functools.lru_cache(maxsize=16)
def select(task_name: str, split: str, k: int, seed: int, per_class: bool = True, use_cached: bool = False,
           feature_lengths: tuple[tuple[str, int], ...] | None = None, trim: bool = True) -> Subset:
  """The k examples per class (`per_class`) or k in all of the task's split with the smallest seeded keys, as
  the task gives them for `feature_lengths` (items; None: untruncated)."""
  if int(k) < 1:
    raise FewShotError(f"FEW_SHOT_K={k!r} must be a positive number of examples (None: the whole split).")
  task = seqio.get_mixture_or_task(task_name)
  if split not in task.splits:
    raise FewShotError(f"Task {task_name!r} has no split {split!r} (it has {list(task.splits)}); few-shot "
                       "subsets are drawn from the training split.")
  ds = task.get_dataset(sequence_length=dict(feature_lengths) if feature_lengths else None, split=split,
                        use_cached=use_cached, shuffle=False, seed=seed, num_epochs=1,
                        trim_output_features=trim and bool(feature_lengths))
  heaps: dict[str, list[tuple[int, int, Mapping[str, np.ndarray]]]] = {}
  for index, example in enumerate(ds.as_numpy_iterator()):
    label = class_of(example) if per_class else "*"
    if label not in heaps and len(heaps) >= MAX_CLASSES:
      raise FewShotError(f"Task {task_name!r} has more than {MAX_CLASSES} distinct targets in {split!r}: it is not "
                         "a classification task. Set FEW_SHOT_PER_CLASS=False to keep FEW_SHOT_K examples in all.")
    heap = heaps.setdefault(label, [])
    entry = (-int.from_bytes(example_key(example, seed), "big"), -index, example)  # max-heap on the key
    if len(heap) < k:
      heapq.heappush(heap, entry)
    elif entry > heap[0]:
      heapq.heapreplace(heap, entry)
  if not heaps:
    raise FewShotError(f"Task {task_name!r} has no examples in split {split!r}.")
  kept = [(label, sorted(heap, reverse=True)) for label, heap in sorted(heaps.items())]
  short = {label: len(heap) for label, heap in kept if len(heap) < k}
  if short:
    logging.warning("Few-shot %s/%s: classes %s have fewer than FEW_SHOT_K=%d examples; all of them are kept.",
                    task_name, split, short, k)
  digest = hashlib.sha256()
  examples = []
  for _, heap in kept:
    for neg_key, _, example in heap:
      digest.update((-neg_key).to_bytes(32, "big"))
      examples.append(example)
  counts = {label: len(heap) for label, heap in kept}
  subset = Subset(task_name, split, int(k), int(seed), per_class, tuple(examples), counts, digest.hexdigest(),
                  ds.element_spec)
  logging.info("Few-shot subset of %s/%s: %d examples %s (seed %d, fingerprint %s).", task_name, split,
               len(examples), counts, seed, subset.fingerprint[:12])
  return subset


def as_dataset(subset: Subset) -> tf.data.Dataset:
  """The subset's examples in their fixed order, with the task's feature types."""
  def generate() -> Iterator[Mapping[str, np.ndarray]]:
    yield from subset.examples
  return tf.data.Dataset.from_generator(generate, output_signature=subset.element_spec).apply(
      tf.data.experimental.assert_cardinality(len(subset.examples)))


def subsets(provider: seqio.Task | seqio.Mixture, split: str, k: int, seed: int, per_class: bool = True,
            use_cached: bool = False, feature_lengths: Mapping[str, int] | None = None,
            trim: bool = True) -> list[tuple[Subset, float]]:
  """Each task (a mixture: each subtask with the split) with its subset and its mixing rate."""
  if isinstance(provider, seqio.Mixture):
    tasks = [(t, provider.get_rate(t)) for t in provider.tasks if split in t.splits]
  else:
    tasks = [(provider, 1.0)]
  lengths = tuple(sorted(feature_lengths.items())) if feature_lengths else None
  return [(select(t.name, split, int(k), int(seed), bool(per_class), bool(use_cached), lengths, bool(trim)), rate)
          for t, rate in tasks]


def stream(parts: list[tuple[Subset, float]], shuffle: bool, seed: int | None, num_epochs: int | None,
           shard_id: int = 0, num_shards: int = 1) -> tf.data.Dataset:
  """This host's examples: each subset shuffled and repeated, mixed by rate, then every num_shards-th example."""
  datasets = []
  for subset, _ in parts:
    ds = as_dataset(subset)
    if shuffle:
      ds = ds.shuffle(len(subset.examples), seed=seed, reshuffle_each_iteration=True)
    datasets.append(ds.repeat(num_epochs))
  if len(datasets) == 1:
    ds = datasets[0]
  else:
    common = set.intersection(*(set(d.element_spec) for d in datasets))
    datasets = [d.map(lambda x, keep=tuple(common): {k: x[k] for k in keep}) for d in datasets]
    total = sum(rate for _, rate in parts)
    ds = tf.data.Dataset.sample_from_datasets(datasets, weights=[rate / total for _, rate in parts], seed=seed)
  return ds.shard(num_shards, shard_id) if num_shards > 1 else ds


def record_or_check(model_dir: str, parts: Sequence[tuple[Subset, float]], write: bool = True) -> None:
  """Write the subsets to MODEL_DIR/few_shot.json, or, when a resumed run finds one, check they are the same:
  a run must not continue on other examples than it started with."""
  if not parts:
    return
  records = [subset.record() for subset, _ in parts]
  path = epath.Path(model_dir) / RECORD_FILE
  if path.exists():
    before = json.loads(path.read_text())
    if before != records:
      changed = [(b.get("task"), b.get("fingerprint", "")[:12], r["task"], r["fingerprint"][:12])
                 for b, r in zip(before, records) if b != r] or "the number of tasks"
      raise FewShotError(f"{path} records another few-shot subset than this run would train on ({changed}): "
                         "the run was started with other FEW_SHOT_K / FEW_SHOT_SEED / FEW_SHOT_PER_CLASS, task or "
                         "data. Resume with the same settings, or start a new MODEL_DIR.")
    return
  if write:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)
