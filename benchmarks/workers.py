"""Benchmark worker processes: each builds one train step (ours or the PyTorch peer) and runs it on request.

One process per run keeps memory high-water marks apart and lets the parent time the runs alternately. The
worker imports its framework only after the parent has set the environment (JAX_PLATFORMS, XLA_FLAGS).
Messages are dicts over a `multiprocessing` pipe: {"cmd": "run", "steps": n[, "warmup": w]} (w untimed steps first)
-> {"result": seconds (or matmul FLOP/s), "cpu_s": process CPU seconds, "minor_faults": page faults};
{"cmd": "stats"} -> memory figures; {"cmd": "outputs"} -> {"outputs": the last result (evaluation jobs)};
{"cmd": "stop"}.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import resource
import time
import traceback
from typing import Any

from benchmarks.shapes import StepShape

_KIB = 1024


def _status_kib(field: str) -> int | None:
  """A `VmRSS`/`VmHWM` line of /proc/self/status in KiB (None off Linux)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def rss_bytes() -> int | None:
  kib = _status_kib("VmRSS")
  return None if kib is None else kib * _KIB


def peak_rss_bytes() -> int:
  """High-water mark of the resident set since the last `reset_peak_rss` (or since the process started).

  The kernel folds per-thread RSS counters into VmHWM lazily, so a fresh VmRSS can exceed it by a few pages;
  the peak is never reported below the current resident set.
  """
  kib = _status_kib("VmHWM")
  peak = (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _KIB
  return max(peak, rss_bytes() or 0)


def release_free_heap() -> None:
  """Give memory that setup freed back to the OS (glibc `malloc_trim`), so it does not count as the steps' peak."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def reset_peak_rss() -> bool:
  """Restart the high-water mark at the current RSS (Linux `clear_refs`); False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ------------------------------------------------------------------------------------------------ builders
class _Ours:
  """Our jitted train step; device memory from the JAX device's allocator statistics where it has them."""

  def __init__(self, spec: dict[str, Any]):
    import jax
    from benchmarks import jax_step
    from prompt_tuning.models import config as model_config
    self._jax = jax
    config_class = getattr(model_config, spec.get("config_class", "T5Config"))
    self.step = jax_step.build_step(config_class(**spec["config"]), StepShape(**spec["shape"]), spec["mode"])
    mem = self.step.memory
    self.info = {"compile_s": self.step.compile_s, "xla_flops": self.step.xla_flops,
                 "xla_memory": {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                                  "alias_size_in_bytes", "temp_size_in_bytes")},
                 "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}

  def run(self, n: int) -> float:
    return self.step.run(n)

  def device_peak_bytes(self) -> int | None:
    stats = self._jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


class _Peer:
  """The PyTorch peer (PEFT prompt tuning or plain HF fine-tuning)."""

  def __init__(self, spec: dict[str, Any]):
    import torch
    from benchmarks import peft_peer
    torch.set_num_threads(os.cpu_count() or 1)
    self._torch = torch
    self.step = peft_peer.build_step(spec["hf_config"], StepShape(**spec["shape"]), spec["mode"], spec["device"],
                                     spec["dtype"])
    self.info = {"trainable_params": self.step.trainable_params, "torch_threads": torch.get_num_threads(),
                 "torch_version": torch.__version__}

  def count_flops(self) -> float:
    return self.step.count_flops()

  def run(self, n: int) -> float:
    return self.step.run(n)

  def device_peak_bytes(self) -> int | None:
    return self._torch.cuda.max_memory_allocated() if self.step.device == "gpu" else None

  def reset_device_peak(self) -> None:
    if self.step.device == "gpu":
      self._torch.cuda.reset_peak_memory_stats()


class _Peak:
  """Measures the matmul peak of JAX (and of PyTorch when installed); `run` returns the best FLOP/s."""

  def __init__(self, spec: dict[str, Any]):
    from benchmarks import matmul_peak
    self._mp = matmul_peak
    self._dtype, self._device = spec["dtype"], spec["device"]
    self._sizes = tuple(spec.get("sizes", matmul_peak.DEFAULT_SIZES))
    try:
      import torch  # noqa: F401  (optional)
      self._torch = True
    except ImportError:
      self._torch = False
    self.info = {"torch": self._torch}
    self.run(1)  # compile and warm up

  def run(self, n: int) -> dict[str, float]:
    repeats = max(n, 1)
    out = {"jax": max(self._mp.jax_matmul_peak(self._dtype, self._sizes, repeats).values())}
    if self._torch:
      out["torch"] = max(self._mp.torch_matmul_peak(self._dtype, self._sizes, repeats, self._device).values())
    return out


def _eval_job(framework: str) -> Any:
  """An evaluation job of `benchmarks.eval_jobs` (rank classification or decoding), built in the worker."""
  def build(spec: dict[str, Any]) -> Any:
    from benchmarks import eval_jobs
    return eval_jobs.BUILDERS[framework](spec)
  return build


BUILDERS = {"ours": _Ours, "peft": _Peer, "hf": _Peer, "peak": _Peak,
            "ours-eval": _eval_job("ours"), "peer-eval": _eval_job("peer")}
# Imported before the RSS baseline is taken, so that "memory over imports" counts only the run's own data.
IMPORTS = {"ours": ("benchmarks.jax_step",), "peft": ("benchmarks.peft_peer", "peft"), "hf": ("benchmarks.peft_peer",),
           "peak": ("benchmarks.matmul_peak",), "ours-eval": ("benchmarks.jax_step",),
           "peer-eval": ("torch", "transformers", "peft")}


# --------------------------------------------------------------------------------------------------- serving
def serve(conn: Any, spec: dict[str, Any]) -> None:
  """Worker entry point: build, warm up, then answer the parent's commands until "stop"."""
  try:
    for module in IMPORTS[spec["framework"]]:
      importlib.import_module(module)
    rss_imports = rss_bytes()
    worker = BUILDERS[spec["framework"]](spec)
    info = dict(worker.info, rss_after_imports=rss_imports)
    if spec["framework"] != "peak":
      start = time.perf_counter()
      worker.run(1)
      info["first_step_s"] = time.perf_counter() - start
      if hasattr(worker, "count_flops"):
        info["counted_flops"] = worker.count_flops()
      info["peak_rss_setup"] = peak_rss_bytes()
      release_free_heap()
      info["rss_before_steps"] = rss_bytes()
      info["peak_reset"] = reset_peak_rss()
      getattr(worker, "reset_device_peak", lambda: None)()
    conn.send({"ok": True, "info": info})
  except Exception as e:  # pylint: disable=broad-except
    conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    return
  while True:
    try:
      msg = conn.recv()
    except EOFError:  # the parent is gone
      return
    if msg["cmd"] == "run":
      for _ in range(msg.get("warmup", 0)):  # untimed, right before the timed steps
        worker.run(1)
      before = resource.getrusage(resource.RUSAGE_SELF)
      result = worker.run(msg["steps"])
      after = resource.getrusage(resource.RUSAGE_SELF)
      cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
      conn.send({"result": result, "cpu_s": cpu, "minor_faults": after.ru_minflt - before.ru_minflt})
    elif msg["cmd"] == "outputs":  # the last result, to check that two runs computed the same thing
      conn.send({"outputs": worker.outputs()})
    elif msg["cmd"] == "stats":
      now = rss_bytes()
      conn.send({"peak_rss_steps": max(peak_rss_bytes(), now or 0), "rss_now": now,
                 "device_peak_bytes": getattr(worker, "device_peak_bytes", lambda: None)()})
    else:
      conn.send({"stopped": True})
      return
