"""Progress lines (step, loss, accuracy, steps/s, tokens/s, ETA) and TensorBoard scalars under MODEL_DIR."""
from __future__ import annotations

import logging
import time
from typing import Mapping

import jax
from clu import metric_writers


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
  """Throughput and ETA since the first logged step."""

  def __init__(self, start_step: int, end_step: int, tokens_per_step: int):
    self.start_step, self.end_step, self.tokens_per_step = start_step, end_step, tokens_per_step
    self._t0 = time.time()
    self._last_step, self._last_t = start_step, self._t0

  def timing(self, step: int) -> dict[str, float]:
    now = time.time()
    dt = max(now - self._last_t, 1e-9)
    rate = (step - self._last_step) / dt
    self._last_step, self._last_t = step, now
    return {"timing/steps_per_second": rate, "timing/target_tokens_per_second": rate * self.tokens_per_step,
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
