r"""Evaluation and decoding time against Hugging Face: rank classification and greedy / beam-4 decoding.

  python -m benchmarks.eval_time                  # T5 1.1 Small, 32 examples, inputs 128 + prompt 100
  python -m benchmarks.eval_time --jobs=rank,rank_shared --rounds=9

The jobs (`benchmarks.eval_jobs`): `rank` scores 2 label candidates per example (64 rows, each a full forward pass,
as our evaluation's `score_batch` and the PyTorch peer do); `rank_shared` is ours with one encoder pass per example
(`EncoderDecoderModel.score_candidates`); `greedy` and `beam4` decode 16 tokens for 32 examples, ours against
`transformers` `generate` with the PEFT prompt. Both frameworks load the same random weights and prompt (written
once by this process), each job runs in its own worker process, and the jobs are timed ALTERNATELY, round by round,
each right after one untimed run of its own, as `benchmarks.step_time` times train steps. The outputs are
compared: scores within float32 tolerance and the same ranking; decodes token for token.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from benchmarks import cli_flags
from benchmarks.eval_jobs import EOS_ID, JOBS, EvalShape
from benchmarks.step_time import HUGEPAGES_TUNABLE, Worker, _machine

# A job's peer: the PyTorch run of the same computation (rank_shared computes what rank computes).
PEER_OF = {"rank": "peer:rank", "rank_shared": "peer:rank", "greedy": "peer:greedy", "beam4": "peer:beam4"}


def _until_eos(row: np.ndarray) -> tuple[int, ...]:
  row = [int(t) for t in row]
  return tuple(row[:row.index(EOS_ID) + 1] if EOS_ID in row else row)


def agreement(job: str, ours: np.ndarray, peer: np.ndarray, candidates: int) -> dict[str, Any]:
  """How far our outputs are from the peer's: scores (max |diff|, same best label) or decodes (rows equal)."""
  if job.startswith("rank"):
    diff = float(np.max(np.abs(ours - peer)))
    same_rank = float(np.mean(ours.reshape(-1, candidates).argmax(1) == peer.reshape(-1, candidates).argmax(1)))
    return {"max_abs_score_diff": diff, "same_best_label": same_rank,
            "agree": bool(np.all(np.isfinite(ours)) and diff < 1e-2 and same_rank == 1.0)}
  same = float(np.mean([_until_eos(a) == _until_eos(b) for a, b in zip(ours, peer)]))
  return {"rows_equal": same, "agree": same == 1.0}


def specs_for(jobs: Sequence[str], shape: EvalShape, weights: dict[str, str], dtype: str, fused: bool,
              with_peer: bool) -> list[dict[str, Any]]:
  common = {"shape": dataclasses.asdict(shape), "weights": weights, "dtype": dtype, "device": "cpu"}
  specs = [{"label": f"ours:{job}", "framework": "ours-eval", "job": job,
            "config_overrides": {"fused_attention": fused}, **common} for job in jobs]
  if with_peer:  # each job's peer once (rank and rank_shared share peer:rank)
    peer_jobs = dict.fromkeys(PEER_OF[job].split(":", 1)[1] for job in jobs)
    specs += [{"label": f"peer:{job}", "framework": "peer-eval", "job": job, **common} for job in peer_jobs]
  return specs


def summarise(specs: list[dict[str, Any]], rounds: list[dict[str, float]], outputs: dict[str, np.ndarray],
              candidates: int) -> dict[str, Any]:
  runs = {}
  for spec in specs:
    label = spec["label"]
    times = [r[label] for r in rounds if label in r]
    res: dict[str, Any] = {"median_s": statistics.median(times), "min_s": min(times), "s": times}
    peer = PEER_OF.get(spec["job"]) if spec["framework"] == "ours-eval" else None
    if peer in outputs and label in outputs:
      res["ratio_to_peer"] = statistics.median(r[label] / r[peer] for r in rounds if label in r and peer in r)
      res.update(agreement(spec["job"], outputs[label], outputs[peer], candidates))
    runs[label] = res
  return {"runs": runs}


def format_table(summary: dict[str, Any]) -> str:
  lines = ["| job | ours s (median) | peer s (median) | ours / peer (per-round median) | outputs |",
           "|---|---|---|---|---|"]
  for label, res in summary["runs"].items():
    if not label.startswith("ours:"):
      continue
    job = label.split(":", 1)[1]
    peer = summary["runs"].get(PEER_OF[job], {})
    if "max_abs_score_diff" in res:
      agree = f"max |Δscore| {res['max_abs_score_diff']:.1e}, same best label {res['same_best_label']:.0%}"
    elif "rows_equal" in res:
      agree = f"{res['rows_equal']:.0%} of rows token for token"
    else:
      agree = "–"
    ratio = f"{res['ratio_to_peer']:.2f}×" if "ratio_to_peer" in res else "–"
    peer_s = f"{peer['median_s']:.3g}" if "median_s" in peer else "–"
    lines.append(f"| {job} | {res['median_s']:.3g} | {peer_s} | {ratio} | {agree} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small")
  parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {JOBS}")
  parser.add_argument("--examples", type=int, default=EvalShape.examples)
  parser.add_argument("--input_length", type=int, default=EvalShape.input_length)
  parser.add_argument("--prompt_length", type=int, default=EvalShape.prompt_length)
  parser.add_argument("--decode_length", type=int, default=EvalShape.decode_length)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--unfused", action="store_true",
                      help="our einsum attention in T5X's layout (FUSED_ATTENTION=False)")
  parser.add_argument("--no_peer", action="store_true", help="ours only (no PyTorch)")
  cli_flags.add_warmup_flag(parser)
  parser.add_argument("--json", default=None, help="also write the full results here")
  args = parser.parse_args(argv)
  jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
  unknown = [j for j in jobs if j not in JOBS]
  if unknown:
    parser.error(f"--jobs: {unknown} unknown; choose from {JOBS}")
  cli_flags.check_warmup_flag(parser, args)
  shape = EvalShape(examples=args.examples, input_length=args.input_length, prompt_length=args.prompt_length,
                    decode_length=args.decode_length)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), HUGEPAGES_TUNABLE) if t)
  from benchmarks.eval_jobs import write_shared_weights  # imports JAX: after the environment is set
  ctx = multiprocessing.get_context("spawn")
  workers: dict[str, Worker] = {}
  rounds: list[dict[str, float]] = []
  with tempfile.TemporaryDirectory() as tmp:
    weights = write_shared_weights(pathlib.Path(tmp), args.size, shape)
    specs = specs_for(jobs, shape, weights, "float32", not args.unfused, not args.no_peer)
    try:
      for spec in specs:
        print(f"setting up {spec['label']} ...", file=sys.stderr, flush=True)
        workers[spec["label"]] = Worker(ctx, spec)
        if not workers[spec["label"]].ok:
          raise RuntimeError(f"{spec['label']}: {workers[spec['label']].error}")
      labels = list(workers)
      for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        rounds.append({label: workers[label].call(cmd="run", steps=1, warmup=args.warmup_steps_per_round)["result"]
                       for label in order})
        print(f"round {r + 1}/{args.rounds} load {os.getloadavg()[0]:.1f}: " +
              ", ".join(f"{k} {v:.3f}s" for k, v in rounds[-1].items()), file=sys.stderr, flush=True)
      outputs = {label: np.asarray(w.call(cmd="outputs")["outputs"]) for label, w in workers.items()}
    finally:
      for w in workers.values():
        w.stop()
  summary = summarise(specs, rounds, outputs, shape.candidates)
  summary.update(command=" ".join(["python -m benchmarks.eval_time", *(argv if argv is not None else sys.argv[1:])]),
                 date=datetime.datetime.now().isoformat(timespec="seconds"), machine=_machine(),
                 shape=dataclasses.asdict(shape), size=args.size, fused_attention=not args.unfused,
                 warmup_steps_per_round=args.warmup_steps_per_round,
                 load_average_1min=os.getloadavg()[0])
  print(format_table(summary))
  cli_flags.write_json(summary, args.json)
  return summary


if __name__ == "__main__":
  main()
