r"""Step time, tokens/s, FLOP/s, memory and compile time of prompt and model tuning, against the PyTorch peer.

  python -m benchmarks.step_time                      # T5 1.1 Small, batch 8, inputs 128, targets 8, prompt 100
  python -m benchmarks.step_time --device=gpu         # bfloat16 on a GPU (see docs/benchmarks.md)
  python -m benchmarks.step_time --runs=ours:prompt,ours:prompt:fused,peft:prompt --rounds=9
  python -m benchmarks.step_time --model=llama --runs=ours:prompt,peft:prompt   # a Llama-shaped decoder-only model

Each run lives in its own worker process (separate memory high-water marks). After every worker has compiled
and warmed up, the runs are timed ALTERNATELY, round by round (the order rotates; each run takes one untimed step
right before its timed one, as a training loop runs steps back to back), together with a matmul-peak
measurement, so that load from other users of the machine hits all of them alike. Ratios and utilisation are
taken per round and then the median is reported. Run specs are `framework:mode[:option...]`:
  framework  ours (this project, JAX) | peft (HF PEFT prompt tuning, PyTorch) | hf (HF fine-tuning, PyTorch)
  mode       prompt | model (model tuning trains every weight of the model without a prompt)
  options    (ours) unfused (the einsum attention; fused, the shipped default, is implied), scan,
             remat=minimal|full, dtype=float32|bfloat16; (peers) dtype=bfloat16 (autocast)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import multiprocessing
import os
import platform
import signal
import statistics
import sys
from typing import Any, Sequence

from benchmarks import cli_flags, matmul_peak

# Each tuning mode as configured by default and in its fastest CPU configuration, next to its peer.
DEFAULT_RUNS = ("ours:prompt,ours:prompt:scan:remat=minimal,peft:prompt,"
                "ours:model,ours:model:scan:remat=minimal,hf:model")
FRAMEWORKS = ("ours", "peft", "hf")
# Pairs whose per-round step-time ratio is reported (ours over the peer doing the same job).
PEERS = {"prompt": "peft:prompt", "model": "hf:model"}
GIB = 2.0**30
# glibc >= 2.35: back large allocations with transparent huge pages. Without it the CPU runtime's per-step
# temporaries (0.7 GB for the reference shape) are faulted in 4 KiB pages on every step (~170k faults, ~15% of
# the step's CPU time). Set for all workers (ours and the peer) alike.
HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# `--model=llama` (issue 16): a Llama-shaped decoder-only model, 8 layers, d 512, 8 heads of 64 sharing 2 key/value
# heads (grouped-query attention), SwiGLU 1408, Llama 2's vocabulary size, untied head; PEFT's CAUSAL_LM peer.
LLAMA_SHAPE = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408,
               "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
               "tie_word_embeddings": False}
# A Small step takes milliseconds on a GPU: time several per round so that one round is not one launch's jitter.
GPU_STEPS_PER_ROUND = 20


@dataclasses.dataclass(frozen=True)
class RunSpec:
  label: str
  framework: str
  mode: str
  options: dict[str, str]


def parse_run(text: str) -> RunSpec:
  parts = text.strip().split(":")
  if len(parts) < 2 or parts[0] not in FRAMEWORKS or parts[1] not in ("prompt", "model"):
    raise ValueError(f"Run spec {text!r} must be framework:mode[:option...] with framework in {FRAMEWORKS} and "
                     "mode prompt|model, e.g. 'ours:prompt:fused'.")
  if parts[0] == "peft" and parts[1] != "prompt":
    raise ValueError(f"Run spec {text!r}: PEFT is the prompt-tuning peer; use 'hf:model' for model tuning.")
  if parts[0] == "hf" and parts[1] != "model":
    raise ValueError(f"Run spec {text!r}: 'hf' is the model-tuning peer; use 'peft:prompt' for prompt tuning.")
  options = {}
  allowed = ("fused", "unfused", "scan", "remat", "dtype") if parts[0] == "ours" else ("dtype",)
  for opt in parts[2:]:
    key, _, value = opt.partition("=")
    if key not in allowed:
      raise ValueError(f"Run spec {text!r}: unknown option {opt!r}; ours takes unfused, scan, remat=..., dtype=...; "
                       "the peers take dtype=... (autocast).")
    options[key] = value or "1"
  return RunSpec(text.strip(), parts[0], parts[1], options)


def _config(args: argparse.Namespace, run: RunSpec) -> Any:
  """Our config for a run: T5 1.1 of `--size`, or the decoder-only model of `LLAMA_SHAPE` (`--model=llama`)."""
  from prompt_tuning.models.config import get_config
  from prompt_tuning.runtime.checkpoints.hf_llama import decoder_only_config_from_hf
  opts = run.options
  options = dict(dtype=opts.get("dtype", args.dtype), dropout_rate=args.dropout, fused_attention="unfused" not in opts,
                 scan_layers="scan" in opts, remat_policy=opts.get("remat", "none"))
  if args.model == "llama":
    return decoder_only_config_from_hf(LLAMA_SHAPE, **options)
  return get_config(args.size, **options)


def build_specs(args: argparse.Namespace, runs: Sequence[RunSpec]) -> list[dict[str, Any]]:
  """Each run as plain fields (the worker rebuilds its config after setting up its environment)."""
  from benchmarks.flops import step_flops
  from prompt_tuning.runtime.checkpoints.hf import hf_config_from_t5
  shape = cli_flags.shape_from_flags(args)
  specs = []
  for run in runs:
    config = _config(args, run)
    fields = dict(dataclasses.asdict(config), dtype=str(config.dtype))
    run_shape = shape if run.mode == "prompt" else shape.without_prompt()
    hf_config = dict(LLAMA_SHAPE) if args.model == "llama" else hf_config_from_t5(config)
    specs.append({"label": run.label, "framework": run.framework, "mode": run.mode, "device": args.device,
                  "dtype": fields["dtype"], "config": fields, "config_class": type(config).__name__,
                  "hf_config": hf_config, "shape": dataclasses.asdict(run_shape), "tokens": run_shape.tokens,
                  "analytic_flops": step_flops(config, run_shape, run.mode)})
  return specs


def peak_spec(device: str) -> dict[str, Any]:
  """The matmul-peak worker: the device's dtype (float32 on CPU, bfloat16 on GPU) and sizes big enough for it."""
  return {"label": "peak", "framework": "peak", "device": device, "dtype": matmul_peak.default_dtype(device),
          "sizes": list(matmul_peak.default_sizes(device))}


class WorkerDied(RuntimeError):
  """A worker process exited (a crash inside XLA or PyTorch, the OOM killer) instead of answering."""


class Worker:
  def __init__(self, ctx: Any, spec: dict[str, Any]):
    from benchmarks import workers
    self.spec = spec
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=workers.serve, args=(child, spec), daemon=True)
    self.process.start()
    try:
      reply = self._recv()
    except WorkerDied as e:
      reply = {"ok": False, "error": str(e)}
    self.ok = reply["ok"]
    self.info = reply.get("info", {})
    self.error = reply.get("error")

  def _died(self) -> WorkerDied:
    self.process.join(timeout=5)
    return WorkerDied(f"worker {self.spec['label']!r} exited with code {self.process.exitcode} without "
                      "answering (its stderr above says why)")

  def _recv(self, poll_s: float = 1.0) -> dict[str, Any]:
    """The worker's next reply; raises `WorkerDied` instead of waiting forever on a dead process."""
    try:
      while not self.conn.poll(poll_s):
        if not self.process.is_alive():
          raise self._died()
      return self.conn.recv()
    except (EOFError, OSError) as e:  # the pipe closed under us
      raise self._died() from e

  def call(self, **msg: Any) -> dict[str, Any]:
    try:
      try:
        self.conn.send(msg)
      except OSError as e:  # BrokenPipeError: nobody reads the other end
        raise self._died() from e
      return self._recv()
    except WorkerDied as e:
      self.ok, self.error = False, str(e)
      raise

  def stop(self) -> None:
    if self.ok and self.process.is_alive():
      self.call(cmd="stop")
    self.process.join(timeout=30)


def _median(xs: Sequence[float]) -> float | None:
  return statistics.median(xs) if xs else None


def summarise(specs: list[dict[str, Any]], workers: dict[str, Worker], rounds: list[dict[str, Any]],
              steps_per_round: int) -> dict[str, Any]:
  """Medians over rounds of step time, throughput, FLOP/s, utilisation (per-round peak) and peer ratios."""
  peaks = [max(r["peak"].values()) for r in rounds if "peak" in r]
  results = {}
  for spec in specs:
    w = workers[spec["label"]]
    if not w.ok:
      results[spec["label"]] = {"skipped": w.error}
      continue
    times = [r["times"][spec["label"]] / steps_per_round for r in rounds]
    median = statistics.median(times)
    stats = w.call(cmd="stats")
    res = {
        "median_step_s": median, "min_step_s": min(times), "max_step_s": max(times), "step_s": times,
        # Process CPU seconds per step: less sensitive to other users' load than wall time.
        "median_cpu_s_per_step": statistics.median(r["cpu_s"][spec["label"]] / steps_per_round for r in rounds),
        "median_minor_faults_per_step": statistics.median(
            r["minor_faults"][spec["label"]] / steps_per_round for r in rounds),
        "tokens_per_s": spec["tokens"] / median,
        "analytic_gflop": spec["analytic_flops"] / 1e9,
        "analytic_tflops_per_s": spec["analytic_flops"] / median / 1e12,
        "utilisation_of_matmul_peak": _median([spec["analytic_flops"] / t / max(r["peak"].values())
                                               for t, r in zip(times, rounds) if "peak" in r]),
        "peak_rss_gib": stats["peak_rss_steps"] / GIB,
        "rss_before_steps_gib": w.info.get("rss_before_steps", 0) / GIB,
        "rss_after_imports_gib": (w.info.get("rss_after_imports") or 0) / GIB,
        "peak_rss_over_imports_gib": (stats["peak_rss_steps"] - (w.info.get("rss_after_imports") or 0)) / GIB,
        "peak_rss_setup_gib": w.info.get("peak_rss_setup", 0) / GIB,
        "device_peak_gib": None if stats["device_peak_bytes"] is None else stats["device_peak_bytes"] / GIB,
        **{k: v for k, v in w.info.items() if k not in ("rss_before_steps", "rss_after_imports", "peak_rss_setup")},
    }
    if w.info.get("xla_flops") is not None:
      res["xla_gflop"] = w.info["xla_flops"] / 1e9
      res["xla_tflops_per_s"] = w.info["xla_flops"] / median / 1e12
    if "counted_flops" in w.info:
      res["torch_counted_gflop"] = w.info["counted_flops"] / 1e9
    peer = PEERS[spec["mode"]]
    if spec["framework"] == "ours" and peer in workers and workers[peer].ok:
      res["ratio_to_" + peer] = statistics.median(r["times"][spec["label"]] / r["times"][peer] for r in rounds)
    results[spec["label"]] = res
  return {"runs": results, "matmul_peak_tflops_per_s": _median(peaks) and _median(peaks) / 1e12,
          "matmul_peak_by_framework_tflops_per_s": {
              k: statistics.median(r["peak"][k] for r in rounds) / 1e12 for k in (rounds[0].get("peak") or {})},
          "load_average_1min": [r["load"] for r in rounds], "rounds": rounds}


def format_table(summary: dict[str, Any]) -> str:
  cols = ("median_step_s", "median_cpu_s_per_step", "tokens_per_s", "analytic_tflops_per_s", "xla_tflops_per_s",
          "utilisation_of_matmul_peak", "peak_rss_gib", "peak_rss_over_imports_gib", "compile_s")
  lines = ["| run | step s (median) | CPU s/step | tokens/s | TFLOP/s (analytic) | TFLOP/s (XLA) | of matmul peak | "
           "peak RSS GiB | over imports GiB | compile s | vs peer |", "|" + "---|" * 11]
  for label, res in summary["runs"].items():
    if "skipped" in res:
      lines.append(f"| {label} | skipped: {res['skipped']} |")
      continue
    cells = [f"{res[c]:.3g}" if isinstance(res.get(c), float) else "–" for c in cols]
    ratio = next((f"{v:.2f}× {k[len('ratio_to_'):]}" for k, v in res.items() if k.startswith("ratio_to_")), "–")
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--model", choices=("t5", "llama"), default="t5",
                      help="t5: T5 1.1 of --size; llama: the decoder-only LLAMA_SHAPE (inputs then targets as one "
                           "prefix-LM sequence, the prompt first) against PEFT's CAUSAL_LM prompt tuning")
  parser.add_argument("--size", default="small")
  cli_flags.add_shape_flags(parser)
  parser.add_argument("--dtype", default=None, help="activation dtype; default float32 on CPU, bfloat16 on GPU")
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated run specs (see the module doc)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps_per_round", type=int, default=None,
                      help=f"steps timed together per run and round; default 1 on CPU, {GPU_STEPS_PER_ROUND} on GPU "
                           "(a Small step there takes milliseconds)")
  cli_flags.add_warmup_flag(parser)
  parser.add_argument("--no_peak", action="store_true", help="skip the per-round matmul-peak measurement")
  parser.add_argument("--no_hugepages", action="store_true",
                      help=f"do not set GLIBC_TUNABLES={HUGEPAGES_TUNABLE} for the workers (see docs/benchmarks.md)")
  parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS for our workers")
  parser.add_argument("--json", default=None, help="also write the full results here")
  args = parser.parse_args(argv)
  args.dtype = args.dtype or ("bfloat16" if args.device == "gpu" else "float32")
  args.steps_per_round = args.steps_per_round or (GPU_STEPS_PER_ROUND if args.device == "gpu" else 1)
  cli_flags.check_warmup_flag(parser, args)

  if args.device == "gpu":
    cli_flags.require_jax_gpu()
  os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
  if args.device == "gpu":  # JAX would otherwise take 75% of the card up front and starve the PyTorch worker
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), args.xla_flags) if f)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not args.no_hugepages:  # every worker, ours and the peer alike
    os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), HUGEPAGES_TUNABLE) if t)
  specs = build_specs(args, [parse_run(r) for r in args.runs.split(",") if r.strip()])
  if not args.no_peak:
    specs_all = specs + [peak_spec(args.device)]
  else:
    specs_all = specs
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the workers
  ctx = multiprocessing.get_context("spawn")
  workers: dict[str, Worker] = {}
  for spec in specs_all:  # one at a time, so that compilations do not compete with each other
    print(f"setting up {spec['label']} ...", file=sys.stderr, flush=True)
    workers[spec["label"]] = Worker(ctx, spec)
    if not workers[spec["label"]].ok:
      print(f"  {spec['label']} skipped: {workers[spec['label']].error}", file=sys.stderr)
  active = [s["label"] for s in specs if workers[s["label"]].ok]
  rounds = []
  try:
    for r in range(args.rounds):
      order = active[r % len(active):] + active[:r % len(active)] if active else []
      record: dict[str, Any] = {"load": os.getloadavg()[0], "times": {}, "cpu_s": {}, "minor_faults": {}}
      if "peak" in workers and workers["peak"].ok:
        try:
          record["peak"] = workers["peak"].call(cmd="run", steps=1)["result"]
        except WorkerDied as e:
          print(f"  {e}", file=sys.stderr, flush=True)
      for label in order:
        try:
          reply = workers[label].call(cmd="run", steps=args.steps_per_round, warmup=args.warmup_steps_per_round)
        except WorkerDied as e:  # keep timing the others; this run is reported without its missing rounds
          print(f"  {e}", file=sys.stderr, flush=True)
          active.remove(label)
          continue
        record["times"][label] = reply["result"]
        record["cpu_s"][label] = reply["cpu_s"]
        record["minor_faults"][label] = reply["minor_faults"]
      rounds.append(record)
      print(f"round {r + 1}/{args.rounds} load {record['load']:.1f}: " +
            ", ".join(f"{k} {v / args.steps_per_round:.3f}s" for k, v in record["times"].items()),
            file=sys.stderr, flush=True)
    summary = summarise(specs, workers, rounds, args.steps_per_round)
  finally:
    for w in workers.values():
      w.stop()
  given = list(argv if argv is not None else sys.argv[1:])
  summary.update(command=" ".join(["python -m benchmarks.step_time"] + given),
                 date=datetime.datetime.now().isoformat(timespec="seconds"), machine=_machine(),
                 xla_flags=os.environ.get("XLA_FLAGS", ""), glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                 shape=specs[0]["shape"] if specs else None, warmup_steps_per_round=args.warmup_steps_per_round)
  print(format_table(summary))
  print(f"matmul peak (median over rounds): {summary['matmul_peak_tflops_per_s']} TFLOP/s "
        f"{summary['matmul_peak_by_framework_tflops_per_s']}; load average per round: "
        f"{[round(x, 1) for x in summary['load_average_1min']]}")
  cli_flags.write_json(summary, args.json)
  return summary


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


if __name__ == "__main__":
  main()
