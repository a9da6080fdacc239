"""Progress lines (step, loss, steps/s, ETA), TensorBoard scalars and model-info.txt under MODEL_DIR."""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from etils import epath


class RunWriters:
  """One TensorBoard writer per subdirectory (`train`, `training_eval/<task>`), host 0 only."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self._writers: dict[str, metric_writers.MetricWriter] = {}

  def write_scalars(self, subdir: str, step: int, scalars: Mapping[str, float]) -> None:
    if subdir not in self._writers:
      self._writers[subdir] = metric_writers.create_default_writer(
          f"{self.model_dir}/{subdir}", just_logging=jax.process_index() > 0, asynchronous=False)
    self._writers[subdir].write_scalars(step, dict(scalars))

  def close(self) -> None:
    for w in self._writers.values():
      w.flush()
      w.close()


class Progress:
  """Throughput and ETA since the first logged step.

  `tokens_per_step` (inputs + targets) feeds the log line; the TensorBoard `timing/*` scalars use T5X's names
  and meanings: sequences and target tokens per second, also per device ("core").
  """

  def __init__(self, start_step: int, end_step: int, tokens_per_step: int, batch_size: int = 0,
               target_tokens_per_step: int = 0, num_devices: int = 1):
    self.start_step, self.end_step, self.tokens_per_step = start_step, end_step, tokens_per_step
    self.batch_size, self.target_tokens_per_step = batch_size, target_tokens_per_step
    self.num_devices = max(num_devices, 1)
    self._t0 = time.time()
    self._last_step, self._last_t = start_step, self._t0

  def timing(self, step: int) -> dict[str, float]:
    """T5X's `timing/*` scalars for the steps since the previous call."""
    now = time.time()
    dt = max(now - self._last_t, 1e-9)
    rate = (step - self._last_step) / dt
    self._last_step, self._last_t = step, now
    seqs_per_second = rate * self.batch_size
    target_tokens_per_second = rate * self.target_tokens_per_step
    return {"timing/steps_per_second": rate, "timing/seconds": dt,
            "timing/seqs": float((step - self.start_step) * self.batch_size),
            "timing/seqs_per_second": seqs_per_second,
            "timing/seqs_per_second_per_core": seqs_per_second / self.num_devices,
            "timing/target_tokens_per_second": target_tokens_per_second,
            "timing/target_tokens_per_second_per_core": target_tokens_per_second / self.num_devices,
            "timing/uptime": now - self._t0}

  def log(self, step: int, metrics: Mapping[str, float]) -> None:
    now = time.time()
    overall = (step - self.start_step) / max(now - self._t0, 1e-9)
    eta = (self.end_step - step) / overall if overall > 0 else float("inf")
    logging.info("step %d/%d  loss %.4f  accuracy %.4f  %.2f steps/s  %.0f tokens/s  ETA %s", step,
                 self.end_step, metrics.get("loss", float("nan")), metrics.get("accuracy", float("nan")), overall,
                 overall * self.tokens_per_step, _fmt_seconds(eta))


def _fmt_seconds(s: float) -> str:
  if s == float("inf"):
    return "?"
  m, sec = divmod(int(s), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{sec:02d}"


def read_scalars(log_dir: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in the TensorBoard event files of `log_dir`, as tag -> [(step, value), ...] in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents*")):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField("tensor") and not value.tensor.string_val:
          out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
        elif value.HasField("simple_value"):
          out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def write_model_info(model_dir: str, trainable: Any, frozen: Any) -> str:
  """T5X's `model-info.txt`: one line per parameter (size, shape, partition spec, trainable or frozen) and
  the totals. Process 0 writes it; returns the text."""
  lines, totals = [], {"trainable": 0, "frozen": 0}
  for kind, params in (("trainable", trainable), ("frozen", frozen)):
    for key, value in jax.tree_util.tree_leaves_with_path(params):
      name = "/".join(str(getattr(k, "key", k)) for k in key)
      size = int(np.prod(value.shape))
      totals[kind] += size
      spec = getattr(getattr(value, "sharding", None), "spec", None)
      lines.append(f"Variable {name:<70} size {size:<12} shape {tuple(value.shape)!s:<18} "
                   f"partition spec {tuple(spec) if spec is not None else None!s:<20} {kind}")
  lines.sort()
  lines.append(f"Total number of parameters: {sum(totals.values())} ({totals['trainable']} trainable, "
               f"{totals['frozen']} frozen)")
  text = "\n".join(lines) + "\n"
  if jax.process_index() == 0:
    out = epath.Path(model_dir) / "model-info.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
  return text
