r"""Train every prompt family on one frozen model and task and write a comparison table.

  python -m prompt_tuning.scripts.compare_families [--steps 30] [--output docs/prompt_families_results.md]

Model tuning, prompt tuning and each family of `gin_configs/families/` are the methods of one sweep spec
(`families_spec`, written to `<output_dir>/spec.json`): `python -m prompt_tuning.sweeps run SPEC --backend=local`
trains them through the `prompt_tuning.train` CLI on the offline demo: the frozen demo model that `make demo`
pretrains (`artifacts/demo/pretrained-<vocabulary id>`, or `--checkpoint`) and `demo_sentiment`. Runs already
done in `--output_dir` are skipped, so rerunning with the same folder only rebuilds the table, which gives the
validation accuracy after each third of the training steps (how fast each family learns), the trainable
parameters, the median time per training step (compilation and evaluations excluded) and the
forward FLOPs each family adds to the frozen model (XLA's count, `prompt_tuning.families.count`).
The multi-task rows read the task id from a sentinel (`<extra_id_0>`) prepended to every input, registered
here as `demo_sentiment_task_index`; with a single task they show the mechanics and cost, not the multi-task
benefit.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import pathlib
import platform
import re
import sys
import time
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np
import seqio

from prompt_tuning.data import demo
from prompt_tuning.data import preprocessors as pt_preprocessors
from prompt_tuning.data import utils as data_utils
from prompt_tuning.scripts.summarize_run import read_metrics
from prompt_tuning.sweeps import cli as sweeps_cli
from prompt_tuning.sweeps.spec import METHODS, Spec, gin_value

TASK = "demo_sentiment"
SENTINEL_TASK = f"{TASK}_task_index"
THIS_MODULE = "prompt_tuning.scripts.compare_families"
PROMPT_MODEL_GIN = "models/t5_1_1_demo_prompt.gin"
SIZE, SIZE_GIN = "demo", "models/sizes/demo.gin"
# The demo model gins are the sweep's model gins followed by the size's gin file.
SPEC_MODEL_GINS = {PROMPT_MODEL_GIN: "models/t5_1_1_prompt.gin", "models/t5_1_1_demo.gin": "models/t5_1_1.gin"}
DEMO_DIR = "artifacts/demo"
PROMPT_LENGTH = 10
WAYWARD_TEXT = "Is this review positive or negative?"


def register_sentinel_task() -> None:
  """`demo_sentiment` with `<extra_id_0>` (task 0) prepended to every input (the reference's task_index_)."""
  base = seqio.get_mixture_or_task(TASK)
  steps = list(base.preprocessors)
  at = steps.index(seqio.preprocessors.tokenize) + 1
  steps.insert(at, functools.partial(pt_preprocessors.add_sentinel_to_beginning, offset=0))
  data_utils.add_task(SENTINEL_TASK, source=base.source, preprocessors=steps, output_features=base.output_features,
                      postprocess_fn=base.postprocessor, metric_fns=base.metric_fns)


register_sentinel_task()  # on import: the train subprocesses import this module as MIXTURE_OR_TASK_MODULE


@dataclasses.dataclass(frozen=True)
class Family:
  """A row of the table and a method of the sweep spec."""

  name: str
  paper: str
  gin_files: tuple[str, ...] = ()  # between the model gin and the run gin
  bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = 0.3
  model_gin: str = PROMPT_MODEL_GIN
  run_gin: str = "runs/prompt_finetune.gin"
  task: str = TASK
  # None: no PROMPT_LENGTH binding, as its gin files read none (no prompt) or set it (wayward: the text's length).
  prompt_length: int | None = PROMPT_LENGTH

  @property
  def method(self) -> str:
    """Its method in the sweep spec ('IA³' -> 'ia3'): 'model_tuning' and 'prompt_tuning' are the spec's own."""
    return re.sub(r"[^a-z0-9]+", "_", unicodedata.normalize("NFKD", self.name).lower()).strip("_")


def _multitask() -> dict[str, int]:
  return {"NUM_TASKS": 1, "SENTINEL_VOCAB_SIZE": demo.vocabulary().vocab_size}


FAMILIES = (
    Family("model tuning", "Raffel et al. 2020", model_gin="models/t5_1_1_demo.gin", run_gin="runs/finetune.gin",
           learning_rate=1e-3, prompt_length=None),
    Family("prompt tuning", "Lester et al. 2021"),
    Family("IDPG: pooled embeddings", "Wu et al. 2022", ("families/instance_pooled.gin",), learning_rate=0.05),
    Family("IDPG: pooled embeddings, PHM n=4", "Wu et al. 2022", ("families/instance_pooled.gin",),
           {"INSTANCE_PHM": 4}, learning_rate=0.05),
    Family("IPT: encoder first pass", "Jiang et al. 2022", ("families/instance_encoder.gin",), learning_rate=0.05),
    Family("IPT: token queries", "Jiang et al. 2022", ("families/instance_token.gin",), learning_rate=0.05),
    Family("multi-task: shared + task (add)", "reference extended/", ("families/multitask.gin",), _multitask(),
           task=SENTINEL_TASK),
    Family("MPT: shared ⊙ rank-1 task matrix", "Wang et al. 2023", ("families/mpt.gin",), _multitask(),
           task=SENTINEL_TASK),
    Family("deep prompts (replace)", "Liu et al. 2022", ("families/layer_prompts.gin",)),
    Family("prefix tuning (MLP 64)", "Li & Liang 2021", ("families/prefix.gin",), {"PREFIX_HIDDEN_DIM": 64},
           learning_rate=0.01),
    Family("P-tuning v1: bi-LSTM encoder", "Liu et al. 2021", ("families/ptuning.gin",), learning_rate=0.05),
    Family("P-tuning v1: MLP encoder", "Liu et al. 2021", ("families/ptuning.gin",), {"PTUNING_ENCODER": "mlp"},
           learning_rate=0.05),
    Family("wayward prompts (gamma 0.01)", "Khashabi et al. 2022", ("families/wayward.gin",),
           {"PROMPT_TEXT": WAYWARD_TEXT}, prompt_length=None),
    Family("IA³", "Liu et al. 2022", ("families/ia3.gin",), model_gin="models/t5_1_1_demo.gin",
           run_gin="runs/ia3_finetune.gin", learning_rate=0.3, prompt_length=None),
)


@dataclasses.dataclass
class Result:
  family: Family
  accuracy: list[tuple[int, float]]  # (steps trained, validation accuracy)
  trainable: int
  total: int
  step_ms: float
  extra_flops_percent: float


def demo_checkpoint() -> str:
  """The latest checkpoint of the demo model `make demo` pretrains (named by the demo vocabulary's hash)."""
  vocab_id = os.path.basename(demo.sentencepiece_model_path()).split(".")[0]
  directory = pathlib.Path(DEMO_DIR) / f"pretrained-{vocab_id}"
  steps = sorted((int(m.group(1)), p) for p in directory.glob("checkpoint_*")
                 if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)))
  if not steps:
    raise FileNotFoundError(f"No checkpoint_<step> under {directory}: run `make demo` once (it pretrains the "
                            "frozen demo model) or pass --checkpoint.")
  return str(steps[-1][1])


def _method(family: Family) -> dict[str, Any]:
  """The family's method entry in the sweep spec."""
  length = {} if family.prompt_length is None else {"PROMPT_LENGTH": family.prompt_length}
  bindings = {**length, **family.bindings, "LEARNING_RATE": family.learning_rate}
  if family.method in METHODS:  # the spec's own model tuning / prompt tuning on the same gin files
    return {"bindings": bindings}
  return {"model_gin": SPEC_MODEL_GINS[family.model_gin], "gin_files": list(family.gin_files),
          "run_gin": family.run_gin, "bindings": bindings}


def families_spec(families: Sequence[Family], checkpoint: str, steps: int, batch_size: int,
                  output_dir: str) -> dict[str, Any]:
  """The sweep spec of the families' runs: one seed each, `steps` steps from `checkpoint`, evaluated every
  third of them (prompt tuning's initialiser is the model gin's, random uniform)."""
  tasks = [t for t in (TASK, SENTINEL_TASK) if any(f.task == t for f in families)]
  return {
      "name": "prompt families",
      "output_dir": output_dir,
      "bindings": {"TASK_FEATURE_LENGTHS": dict(demo.SENTIMENT_FEATURE_LENGTHS), "TRAIN_STEPS": 0,
                   "TRAIN_STEPS_RELATIVE": steps, "BATCH_SIZE": batch_size, "EVAL_PERIOD": steps // 3,
                   "STATS_PERIOD": 1, "SAVE_PERIOD": steps, "DROPOUT_RATE": 0.0},
      "sizes": {SIZE: {"gin_files": [SIZE_GIN], "checkpoint": checkpoint}},
      "tasks": {t: {"name": t, "module": THIS_MODULE, "metric": "accuracy"} for t in tasks},
      "methods": {f.method: _method(f) for f in families},
      "defaults": {"seeds": [0], "prompt_length": PROMPT_LENGTH, "prompt_init": "random_uniform"},
      "grids": [{"name": t, "tasks": [t], "methods": [f.method for f in families if f.task == t]} for t in tasks],
  }


def median_step_time_ms(model_dir: pathlib.Path) -> float:
  """Median milliseconds per step (TensorBoard `timing/steps_per_second`, logged every step): robust to the
  first step's compilation and to the steps followed by an evaluation."""
  from prompt_tuning.runtime.summaries import read_scalars  # pylint: disable=g-import-not-at-top
  rates = read_scalars(model_dir / "train").get("timing/steps_per_second", [])
  if not rates:
    raise ValueError(f"No timing/steps_per_second in {model_dir}/train.")
  return float(np.median([1000.0 / rate for _, rate in rates]))


def family_result(spec: Spec, family: Family, steps: int) -> Result:
  """The family's row from its run folder: accuracy after each evaluation, parameters, step time, FLOPs."""
  from prompt_tuning.families import count  # pylint: disable=g-import-not-at-top
  (run,) = [r for r in spec.runs() if r.method == family.method]
  model_dir = pathlib.Path(spec.run_dir(run.run_id))
  rows = read_metrics(str(model_dir))[family.task]
  start = rows[-1]["step"] - steps  # the frozen checkpoint's step: the runs count on from it
  accuracy = [(r["step"] - start, r["accuracy"]) for r in rows]
  files, run_gin, bindings = spec.train_config(run)
  lengths = demo.SENTIMENT_FEATURE_LENGTHS
  cost = count.costs_from_gin(files, [f"{k} = {gin_value(v)}" for k, v in bindings.items()],
                              input_length=lengths["inputs"], target_length=lengths["targets"])
  trainable = cost.total_params if run_gin == "runs/finetune.gin" else cost.trainable_params
  return Result(family, accuracy, trainable, cost.total_params, median_step_time_ms(model_dir),
                cost.extra_flops_percent)


def table(results: Sequence[Result], command: str, checkpoint: str, steps: int, batch_size: int,
          seconds: float) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  lines = [
      "# Prompt families on the CPU micro setting",
      "",
      f"Written by `{command}` ({seconds / 60:.1f} min on {os.cpu_count()} CPU cores, {platform.machine()}, "
      f"jax {jax.__version__}). Frozen model: the demo T5 1.1 (`{PROMPT_MODEL_GIN}`, checkpoint "
      f"`{checkpoint}`); task `{TASK}` (validation accuracy after training, one seed, so differences of a few "
      f"points are noise). Every run: {steps} steps, batch {batch_size}, Adafactor, no dropout, prompt length "
      f"{PROMPT_LENGTH} (wayward: the text's length); step time is the median over the run's steps on this "
      "(shared) machine.",
      "",
      f"| family | paper | gin | LR | accuracy (%) after {' / '.join(str(s) for s, _ in results[0].accuracy)} steps "
      "| trainable params | % of model | ms / step | extra fwd FLOPs |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    f = r.family
    gin = ", ".join(f"`{g}`" for g in f.gin_files) or f"`{f.model_gin}`"
    shown = [f"`{k}={gin_value(v)}`" for k, v in f.bindings.items() if "VOCAB_SIZE" not in k]
    if shown:
      gin += " " + " ".join(shown)
    acc = " / ".join(f"{a:.1f}" for _, a in r.accuracy)
    lines.append(f"| {f.name} | {f.paper} | {gin} | {f.learning_rate:g} | {acc} | {r.trainable:,} | "
                 f"{100 * r.trainable / r.total:.2f} | {r.step_ms:.1f} | {r.extra_flops_percent:+.1f}% |")
  lines += ["", "Extra forward FLOPs are relative to the frozen model without any prompt at this input length "
            f"({demo.SENTIMENT_FEATURE_LENGTHS['inputs']} tokens); see docs/prompt_families.md for each family's "
            "cost model.", ""]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=f"python -m {THIS_MODULE}", description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30, help="training steps per family (evaluated every third)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--checkpoint", default=None, help="frozen model (default: the latest demo checkpoint)")
  parser.add_argument("--work_dir", default="/tmp/prompt_families", help="the sweep goes to a new folder here")
  parser.add_argument("--output_dir", default=None, help="the sweep's folder instead (its runs done are kept)")
  parser.add_argument("--output", default="docs/prompt_families_results.md")
  parser.add_argument("--only", default="", help="comma-separated substrings of family names to run")
  args = parser.parse_args(argv)
  # gin logs every search path it tries while counting parameters; the CLIs silence the same records.
  logging.getLogger().addFilter(lambda record: "/gin/resource_reader.py" not in record.pathname)
  try:
    checkpoint = args.checkpoint or demo_checkpoint()
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  families = [f for f in FAMILIES if not args.only or any(s in f.name for s in args.only.split(","))]
  output_dir = args.output_dir or f"{args.work_dir}/{time.strftime('%Y%m%d-%H%M%S')}"
  spec_path = pathlib.Path(output_dir) / "spec.json"
  spec_path.parent.mkdir(parents=True, exist_ok=True)
  spec_path.write_text(json.dumps(families_spec(families, checkpoint, args.steps, args.batch_size, output_dir),
                                  indent=1))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # for the train CLIs
  start = time.time()
  if sweeps_cli.main(["run", str(spec_path), "--backend=local"]):
    print(f"error: some runs failed; see their sweep.log under {output_dir}", file=sys.stderr)
    return 1
  spec = Spec.load(spec_path)
  results = [family_result(spec, family, args.steps) for family in families]
  for r in results:
    shown = ", ".join(f"{a:.1f}% after {s}" for s, a in r.accuracy)
    print(f"[{r.family.name}] accuracy {shown}; {r.trainable:,} trainable; {r.step_ms:.1f} ms/step",
          file=sys.stderr, flush=True)
  command = " ".join(["python -m", THIS_MODULE, *(argv if argv is not None else sys.argv[1:])])
  text = table(results, command, checkpoint, args.steps, args.batch_size, time.time() - start)
  pathlib.Path(args.output).write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
