r"""Where our train step's time goes, per XLA operation (CPU): a `jax.profiler` trace, summed per HLO instruction.

  python -m benchmarks.op_profile --run=ours:prompt:fused:scan:remat=minimal     # reference shape, 3 steps
  python -m benchmarks.op_profile --run=ours:prompt --steps=5 --top=25 --json=ops.json

XLA CPU records one trace event per executed operation (a "thunk": a YNNPACK/Eigen matmul, a generated loop
fusion, a copy...), named after its HLO instruction. Each event is matched to the compiled module's instruction
and classified:

  category  matmul (a dot, or a library fusion holding one with the element-wise work XLA fused around it:
            YNNPACK fuses e.g. the softmax's max/sum into the attention dots) | scan slicing (per-layer
            dynamic-slice and dynamic-update-slice of `nn.scan`'s stacked weights and residuals) |
            transpose/copy | element-wise/other
  phase     forward | recompute (the forward work remat repeats inside the backward pass) | backward

"op s/step" sums the operations' own durations over all threads. Operations may run two at a time (XLA runs
independent thunks concurrently), and a matmul may borrow the other thread, so compare op time with the process
CPU time (also reported) rather than with the wall time.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import math
import os
import re
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from benchmarks import cli_flags

CATEGORIES = ("matmul", "scan slicing", "transpose/copy", "element-wise/other")
PHASES = ("forward", "recompute", "backward")
# Control flow contains other thunks: counting it would count its body twice.
CONTAINERS = {"while", "conditional", "call"}
STACKS = {"EncoderDecoder.encode": "encoder", "EncoderDecoder.decode": "decoder"}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) \(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_DOT = re.compile(r"dot\(%?([\w.\-]+), .*lhs_contracting_dims=\{([\d,]*)\}")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str
  opcode: str
  op_name: str  # JAX's name stack, e.g. ".../transpose(jvp(EncoderDecoder))/.../mlp/wi_0/dot_general"
  matmul_flops: float  # 2·m·n·k summed over the dots it runs (itself, or those of its fused computation), per call

  @property
  def category(self) -> str:
    if self.matmul_flops > 0:
      return "matmul"
    if any(k in self.name or k == self.opcode for k in ("dynamic-slice", "dynamic-update-slice")):
      return "scan slicing"
    if "transpose" in self.name or self.opcode in ("copy", "transpose") or self.name.startswith("copy"):
      return "transpose/copy"
    return "element-wise/other"

  @property
  def component(self) -> str:
    """The model part it belongs to, from JAX's name stack: "encoder/attention/query", "decoder/mlp/wi_0",
    "encoder/attention" (the attention core: scores, softmax, weighted sum), "encoder/other" (embedding, prompt,
    final norm), or "other" (loss, optimizer)."""
    parts = self.op_name.split(";")[0].split("/")
    stacks = [STACKS[p] for p in parts if p in STACKS]
    stack = stacks[-1] if stacks else "layers"
    layer = [i for i, p in enumerate(parts) if re.fullmatch(r"layers(_\d+)?", p)]  # scanned or unrolled
    if not layer:
      return f"{stack}/other" if stacks else "other"
    named = []
    for p in parts[layer[0] + 1:-1]:  # the last part is the primitive
      if "(" in p or "->" in p or p in ("checkpoint", "rematted_computation", "closed_call"):
        break
      named.append(p)
    return "/".join([stack] + named)

  @property
  def phase(self) -> str:
    if "transpose(jvp(" not in self.op_name:
      return "forward"
    return "recompute" if "rematted_computation" in self.op_name else "backward"


def dims(shape: str) -> list[int]:
  """`f32[8,228,512]{2,1,0}` -> [8, 228, 512] (a scalar gives [])."""
  m = re.match(r"\w+\[([\d,]*)\]", shape)
  if not m:
    raise ValueError(f"Not an array shape: {shape!r}")
  return [int(d) for d in m.group(1).split(",") if d]


def _dot_flops(line: str, out_shape: str, shapes: Mapping[str, str]) -> float:
  """2 · (output elements) · (contracted size) of a `dot` line; its lhs is looked up by name."""
  m = _DOT.search(line)
  lhs = dims(shapes[m.group(1)])
  contracted = math.prod(lhs[int(d)] for d in m.group(2).split(",") if d)
  return 2.0 * math.prod(dims(out_shape)) * contracted


def parse_hlo(hlo_text: str) -> dict[str, Instruction]:
  """The compiled module's instructions by name (names are unique across its computations)."""
  fields, calls, shapes = {}, {}, {}
  flops: dict[str, float] = collections.defaultdict(float)  # computation -> matmul FLOPs of its dots
  computation = ""
  for line in hlo_text.splitlines():
    c = _COMPUTATION.match(line)
    if c and not line.startswith(" "):
      computation = c.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    op_name = _OP_NAME.search(line)
    shapes[name] = shape
    called = _CALLS.search(line)
    calls[name] = called.group(1) if called and opcode == "fusion" else None
    own = _dot_flops(line, shape, shapes) if opcode == "dot" else 0.0
    fields[name] = (shape, opcode, op_name.group(1) if op_name else "", own)
    flops[computation] += own
  return {name: Instruction(name, shape, opcode, op_name, own + flops.get(calls[name] or "", 0.0))
          for name, (shape, opcode, op_name, own) in fields.items()}


def thunk_seconds(xspace_path: str, instructions: Mapping[str, Instruction]) -> tuple[dict[str, float], dict[str, int]]:
  """Total seconds and call count of each HLO instruction in a trace (all host threads)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  space = xplane_pb2.XSpace()
  with open(xspace_path, "rb") as f:
    space.ParseFromString(f.read())
  seconds: dict[str, float] = collections.defaultdict(float)
  calls: dict[str, int] = collections.defaultdict(int)
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        inst = instructions.get(name)
        if inst is None or inst.opcode in CONTAINERS:
          continue
        seconds[name] += event.duration_ps * 1e-12
        calls[name] += 1
  return dict(seconds), dict(calls)


def _gflop_per_s(flops: float, seconds: float) -> float:
  return flops / seconds / 1e9 if seconds else 0.0


def summarise(seconds: Mapping[str, float], calls: Mapping[str, int], instructions: Mapping[str, Instruction],
              steps: int, top: int) -> dict[str, Any]:
  """Per-step seconds by category, phase, both, and model component, and the `top` most expensive operations."""
  by_both = {f"{c}/{p}": 0.0 for c in CATEGORIES for p in PHASES}
  comp_s: dict[str, float] = collections.defaultdict(float)
  comp_flops: dict[str, float] = collections.defaultdict(float)
  for name, s in seconds.items():
    inst = instructions[name]
    by_both[f"{inst.category}/{inst.phase}"] += s / steps
    comp_s[inst.component] += s / steps
    comp_flops[inst.component] += inst.matmul_flops * calls[name] / steps
  by_cat = {c: sum(by_both[f"{c}/{p}"] for p in PHASES) for c in CATEGORIES}
  by_phase = {p: sum(by_both[f"{c}/{p}"] for c in CATEGORIES) for p in PHASES}
  matmul_flops = sum(comp_flops.values())
  components = [{"component": c, "seconds_per_step": comp_s[c], "matmul_gflop_per_step": comp_flops[c] / 1e9,
                 "gflop_per_s": _gflop_per_s(comp_flops[c], comp_s[c])}
                for c in sorted(comp_s, key=comp_s.get, reverse=True)]
  top_ops = [{"name": n, "seconds_per_step": seconds[n] / steps, "calls_per_step": calls[n] / steps,
              "gflop_per_s": _gflop_per_s(instructions[n].matmul_flops * calls[n], seconds[n]),
              "category": instructions[n].category, "phase": instructions[n].phase,
              "shape": instructions[n].shape, "op_name": instructions[n].op_name}
             for n in sorted(seconds, key=seconds.get, reverse=True)[:top]]
  return {"op_seconds_per_step": sum(by_cat.values()), "matmul_flops_per_step": matmul_flops,
          "matmul_gflop_per_s_while_running": _gflop_per_s(matmul_flops, by_cat["matmul"]),
          "by_category": by_cat, "by_phase": by_phase, "by_category_and_phase": by_both,
          "by_component": components, "top_ops": top_ops}


def profile_step(step: Any, steps: int, top: int, trace_dir: str | None = None) -> dict[str, Any]:
  """Trace `steps` steps of a compiled `benchmarks.jax_step.JaxStep` (already warm) and summarise them."""
  import jax  # pylint: disable=import-outside-toplevel
  instructions = parse_hlo(step.compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    trace_dir = trace_dir or tmp
    cpu0 = time.process_time()
    jax.profiler.start_trace(trace_dir)
    try:
      wall = step.run(steps)
    finally:
      jax.profiler.stop_trace()
    cpu = time.process_time() - cpu0
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
      raise RuntimeError(f"jax.profiler wrote no *.xplane.pb under {trace_dir}; is the profiler plugin disabled?")
    seconds, calls = thunk_seconds(paths[-1], instructions)
  report = summarise(seconds, calls, instructions, steps, top)
  report.update(steps=steps, wall_seconds_per_step=wall / steps, cpu_seconds_per_step=cpu / steps,
                instructions_seen=len(seconds))
  return report


def format_report(report: Mapping[str, Any], label: str) -> str:
  op = report["op_seconds_per_step"]
  lines = [f"{label}: wall {report['wall_seconds_per_step']:.3f} s/step, process CPU "
           f"{report['cpu_seconds_per_step']:.3f} s/step, operations {op:.3f} s/step "
           f"({report['instructions_seen']} HLO instructions)",
           f"matmul FLOPs executed: {report['matmul_flops_per_step'] / 1e9:.1f} GFLOP/step, "
           f"{report['matmul_gflop_per_s_while_running']:.0f} GFLOP/s over the matmul operations' own time", "",
           "| category | " + " | ".join(PHASES) + " | total | share of op time |",
           "|---|" + "---|" * (len(PHASES) + 2)]
  for c in CATEGORIES:
    cells = [f"{report['by_category_and_phase'][f'{c}/{p}'] * 1e3:.0f} ms" for p in PHASES]
    share = report["by_category"][c] / op if op else 0.0
    lines.append(f"| {c} | " + " | ".join(cells) + f" | {report['by_category'][c] * 1e3:.0f} ms | {share:.0%} |")
  lines += ["", "| component (top 15) | ms/step | share of op time | matmul GFLOP/step | GFLOP/s |",
            "|---|---|---|---|---|"]
  for c in report["by_component"][:15]:
    share = c["seconds_per_step"] / op if op else 0.0
    lines.append(f"| {c['component']} | {c['seconds_per_step'] * 1e3:.0f} | {share:.0%} | "
                 f"{c['matmul_gflop_per_step']:.1f} | {c['gflop_per_s']:.0f} |")
  lines += ["", "| operation | ms/step | calls/step | GFLOP/s | category | phase | shape | JAX op |",
            "|---|---|---|---|---|---|---|---|"]
  for t in report["top_ops"]:
    where = "/".join(t["op_name"].split("/")[-3:])
    rate = f"{t['gflop_per_s']:.0f}" if t["gflop_per_s"] else "–"
    lines.append(f"| {t['name']} | {t['seconds_per_step'] * 1e3:.1f} | {t['calls_per_step']:g} | {rate} | "
                 f"{t['category']} | {t['phase']} | {t['shape']} | {where} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default="ours:prompt:fused:scan:remat=minimal",
                      help="one of our run specs, as in benchmarks.step_time (ours:mode[:option...])")
  parser.add_argument("--size", default="small")
  cli_flags.add_shape_flags(parser)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--steps", type=int, default=3, help="traced steps (after two untraced warm-up steps)")
  parser.add_argument("--top", type=int, default=15, help="how many of the most expensive operations to list")
  parser.add_argument("--trace_dir", default=None, help="keep the trace here (TensorBoard's profile plugin reads it)")
  parser.add_argument("--json", default=None, help="also write the report here")
  args = parser.parse_args(argv)
  from benchmarks import step_time  # pylint: disable=import-outside-toplevel
  run = step_time.parse_run(args.run)
  if run.framework != "ours":
    raise ValueError(f"--run={args.run!r}: the operation profile reads XLA's trace, so it takes our runs only "
                     "(ours:prompt..., ours:model...); profile the PyTorch peer with torch.profiler.")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    raise ValueError(f"The operation profile matches XLA CPU's trace events; this backend is "
                     f"{jax.default_backend()!r}. Run it with JAX_PLATFORMS=cpu, or read a GPU trace in TensorBoard.")
  from benchmarks import jax_step  # pylint: disable=import-outside-toplevel
  args.model = "t5"
  config = step_time._config(args, run)  # pylint: disable=protected-access
  shape = cli_flags.shape_from_flags(args)
  step = jax_step.build_step(config, shape, run.mode)
  step.run(2)
  report = profile_step(step, args.steps, args.top, args.trace_dir)
  flags = list(argv if argv is not None else sys.argv[1:])
  report.update(run=args.run, shape=dataclasses.asdict(jax_step.mode_shape(shape, run.mode)),
                command=" ".join(["python -m benchmarks.op_profile", *flags]))
  print(format_report(report, args.run))
  cli_flags.write_json(report, args.json)
  return report


if __name__ == "__main__":
  main()
