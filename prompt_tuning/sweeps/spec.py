"""The sweep spec (JSON) and the runs it expands to: model sizes x methods x tasks x seeds (x prompt lengths x
prompt initialisers for prompt tuning), each a train or eval CLI command with its own run folder.

Methods: `prompt_tuning` (a soft prompt on the frozen model), `model_tuning` (every weight trains) and
`prompt_design` (a text prompt with `NUM_SHOTS` solved examples and no training, scored by the eval CLI);
`multi_task_model_tuning` (one model tuned on a `mixture` per size and seed, evaluated on each task) and
`prompt_ensemble` (the prompts of a grid's seeds evaluated together, after their training); a method of another
name is a custom train run with its own `model_gin`, `gin_files` and `run_gin` (e.g. a prompt family of
gin_configs/families/). The format is documented in docs/scaling.md; `{output_dir}` in any string is replaced
by the output folder. Each command gets the spec's, size's and task's bindings that its gin files read (the CLIs
refuse a macro their gin files do not read; `gin_files.macros` tells both); a macro that a method's own
`bindings` set and its gin files do not read is a SpecError, as is a shared one that no command reads.

Checkpoint variants (the paper's Figure 3c/d): a size may name other checkpoints (`checkpoints`), an `adapt`
section continues each size's checkpoint on another task and names the steps it keeps, and a grid's
`checkpoints` runs its points from those (see "Checkpoint variants" below).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import re
from typing import Any, Mapping, Sequence

from prompt_tuning import gin_files
from prompt_tuning.errors import UserError

METHODS = ("prompt_tuning", "model_tuning", "prompt_design")  # one run per task, the default methods
MULTI_TASK = "multi_task_model_tuning"
ENSEMBLE = "prompt_ensemble"
BUILTIN = (*METHODS, MULTI_TASK, ENSEMBLE)
PROMPTED = ("prompt_tuning", ENSEMBLE)  # the methods with a prompt length and initialiser
PRETRAIN = "pretrain"
ADAPT = "adapt"
DEFAULT_CHECKPOINT = "default"  # a grid's name for each size's own `checkpoint`
MIXTURE = "mixture"  # the task folder of multi-task runs
CUSTOM_METHOD_KEYS = {"model_gin", "gin_files", "run_gin", "bindings"}
_METHOD_KEYS = {MULTI_TASK: {"mixture", "module", "eval_tasks", "bindings"}}
_TASK_KEYS = {"name", "module", "metric", "bindings", "higher_is_better", "split", "evals", "select_by"}
_GRID_KEYS = {"name", "sizes", "tasks", "methods", "seeds", "prompt_lengths", "prompt_inits", "checkpoints"}
_TOP_KEYS = {"name", "description", "output_dir", "gin_search_paths", "gin_files", "bindings", "sizes", "tasks",
             "methods", "defaults", "grids", "pretrain", "adapt", "benchmark", "tpu"}
# The order the commands run in (`Command.phase`): each phase starts from checkpoints the earlier ones write.
PRETRAIN_PHASE, ADAPT_PHASE, RUN_PHASE, READS_RUNS_PHASE = range(4)


class SpecError(UserError):
  """A sweep spec that cannot run; the message names the key to fix."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the sweep; `prompt_length` / `prompt_init` only for prompt tuning; `checkpoint` names one of
  the size's checkpoint variants (None: the size's `checkpoint`)."""

  task: str
  size: str
  method: str
  seed: int
  prompt_length: int | None = None
  prompt_init: str | None = None
  members: tuple[int, ...] = ()  # a prompt ensemble's seeds (its `seed` is 0)
  checkpoint: str | None = None

  @property
  def run_id(self) -> str:
    """The run folder relative to the output folder, e.g. `rte/xl/prompt_tuning-len100-from_class_labels/seed0`
    (a multi-task run: `mixture/xl/multi_task_model_tuning/seed0`; an ensemble: `.../seeds0-1-2`; from a
    checkpoint variant: `rte/xl-lm_adapt_10k/...`)."""
    name = self.method
    if self.prompt_length is not None:
      name += f"-len{self.prompt_length}-{pathlib.PurePosixPath(self.prompt_init).stem}"
    seeds = f"seeds{'-'.join(map(str, self.members))}" if self.members else f"seed{self.seed}"
    size = self.size if self.checkpoint is None else f"{self.size}-{self.checkpoint}"
    return f"{self.task}/{size}/{name}/{seeds}"


@dataclasses.dataclass(frozen=True)
class Eval:
  """One evaluation a run writes, `inference_eval/<task_name>-metrics.jsonl`, scored by the mean of `metrics`.

  `name` is what the results call it: the spec task, or one of its `evals`."""

  name: str
  task_name: str
  metrics: tuple[str, ...]
  higher_is_better: bool = True

  @property
  def metric(self) -> str:
    """The metrics' name in the results, e.g. `accuracy` or `mean_3class_f1+accuracy` (their mean)."""
    return "+".join(self.metrics)


@dataclasses.dataclass(frozen=True)
class Command:
  """A CLI invocation: `python -m prompt_tuning.<module> <flags>`, writing into `run_dir`."""

  run_id: str
  size: str
  module: str  # train | eval
  flags: tuple[str, ...]
  run_dir: str
  phase: int = RUN_PHASE


def gin_value(value: Any) -> str:
  """A JSON value as a gin literal; strings starting with '@' or '%' stay gin references."""
  if isinstance(value, str) and value[:1] in ("@", "%"):
    return value
  return repr(value)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in mapping:
    raise SpecError(f"{where} needs {key!r}.")
  return mapping[key]


def _metrics(value: Any, where: str) -> tuple[str, ...]:
  """A `metric` entry: one metric key, or a list of them (the score is their mean)."""
  names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
  if not names or not all(isinstance(n, str) and n for n in names):
    raise SpecError(f"{where}: 'metric' must be a metric key of the task's metrics file or a list of them "
                    f"(scored by their mean), e.g. \"accuracy\" or [\"mean_3class_f1\", \"accuracy\"]; got {value!r}.")
  return names


class Spec:
  """A validated sweep spec; `runs()` lists its points, `commands()` the CLI calls that produce them."""

  def __init__(self, raw: Mapping[str, Any], output_dir: str | None = None):
    output_dir = output_dir or raw.get("output_dir")
    if not output_dir:
      raise SpecError("The spec needs 'output_dir' (or pass --output_dir).")
    self.output_dir = str(output_dir).rstrip("/")
    raw = _substitute(raw, {"output_dir": self.output_dir})
    unknown = set(raw) - _TOP_KEYS
    if unknown:
      raise SpecError(f"Unknown spec keys {sorted(unknown)}; the keys are {sorted(_TOP_KEYS)}.")
    self.raw = raw
    self.name: str = raw.get("name", "sweep")
    self.sizes: dict[str, dict] = dict(_require(raw, "sizes", "The spec"))
    self.tasks: dict[str, dict] = dict(_require(raw, "tasks", "The spec"))
    self.methods: dict[str, dict] = {m: dict(v or {}) for m, v in raw.get("methods", {}).items()}
    self.defaults: dict[str, Any] = {"seeds": [0], "prompt_length": 100, "prompt_init": "from_class_labels",
                                     **raw.get("defaults", {})}
    self.pretrain: dict | None = raw.get("pretrain")
    self.adapt: dict | None = raw.get(ADAPT)
    self.grids: list[dict] = list(raw.get("grids") or [{"name": "scaling"}])
    self._macros: dict[tuple[str, ...], gin_files.Macros | None] = {}
    self._validate()

  @classmethod
  def load(cls, path: str | pathlib.Path, output_dir: str | None = None) -> "Spec":
    try:
      raw = json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as e:
      raise SpecError(f"{path} is not valid JSON: {e}") from None
    return cls(raw, output_dir)

  def _validate(self) -> None:
    for method, cfg in self.methods.items():
      if method in BUILTIN:
        allowed = _METHOD_KEYS.get(method, {"bindings"})
        if set(cfg) - allowed:
          keys = ", ".join(repr(k) for k in sorted(allowed))
          raise SpecError(f"Method {method!r} takes only {keys}; give another name to a custom method.")
      elif "run_gin" not in cfg:
        raise SpecError(f"Unknown method {method!r} under 'methods'; choose from {list(BUILTIN)}, or give it a "
                        "'run_gin' (a custom train run; also 'model_gin', 'gin_files', 'bindings').")
      elif set(cfg) - CUSTOM_METHOD_KEYS or not re.fullmatch(r"[A-Za-z0-9_.-]+", method):
        raise SpecError(f"Custom method {method!r} needs a name of letters, digits, '_', '-' or '.' and takes only "
                        f"{sorted(CUSTOM_METHOD_KEYS)}.")
    for name, task in self.tasks.items():
      self._validate_task(name, task)
    if MULTI_TASK in self.methods:
      cfg = self.methods[MULTI_TASK]
      _require(cfg, "mixture", f"Method {MULTI_TASK!r}")
      bad = [t for t in cfg.get("eval_tasks", {}) if t not in self.tasks or len(self.task_evals(t)) != 1]
      if bad:
        raise SpecError(f"Method {MULTI_TASK!r}: 'eval_tasks' maps each task with one evaluation to the SeqIO task "
                        f"its mixture evaluates it by; {bad} are not such tasks (known: {list(self.tasks)}).")
    self._validate_benchmark()
    for name, size in self.sizes.items():
      if "checkpoint" not in size and self.pretrain is None:
        raise SpecError(f"Size {name!r} needs 'checkpoint' (a pretrained model), or add a 'pretrain' section.")
    if self.pretrain is not None:
      for key in ("task", "steps"):
        _require(self.pretrain, key, "The 'pretrain' section")
    for grid in self.grids:
      unknown = set(grid) - _GRID_KEYS
      if unknown:
        raise SpecError(f"Unknown grid keys {sorted(unknown)} in grid {grid.get('name')!r}; use {sorted(_GRID_KEYS)}.")
      for key, known in (("sizes", self.sizes), ("tasks", self.tasks), ("methods", self.method_names())):
        bad = [v for v in grid.get(key, []) if v not in known]
        if bad:
          raise SpecError(f"Grid {grid.get('name')!r} names unknown {key} {bad}; known: {list(known)}.")
    self._validate_checkpoints()
    runs = set(self.runs())
    for run in runs:
      if run.method == ENSEMBLE and not set(self.members(run)) <= runs:
        raise SpecError(f"The prompt ensemble {run.run_id} needs the prompt tuning runs of its seeds "
                        f"{list(run.members)}: add 'prompt_tuning' to the methods of its grid.")
    self.commands()  # each method's and section's own bindings are read by its commands' gin files (`_read_by`)
    self._validate_shared_bindings()

  def _validate_shared_bindings(self) -> None:
    """A macro of the spec's, a size's or a task's bindings that no command's gin files read and no gin file knows
    (a misspelling) is an error: `_read_by` would leave it out of every command. One that other gin files read
    (CLASS_LABELS in a spec whose grids have no class-label initialiser) is left out."""
    found = list(self._macros.values())
    if None in found:
      return  # a gin file that is not on this machine: the CLIs check what they get
    read = frozenset().union(*(m.read for m in found))
    shared = [("The spec's 'bindings'", self.raw.get("bindings", {})),
              *((f"Size {name!r}", cfg.get("bindings", {})) for name, cfg in self.sizes.items()),
              *((f"Task {name!r}", task.get("bindings", {})) for name, task in self.tasks.items())]
    unread = [(where, k) for where, bindings in shared for k in bindings if gin_files.is_macro(k) and k not in read]
    if not unread:
      return
    known = read | set(gin_files.readers([*self._search_paths(), *gin_files.default_search_paths()]))
    for where, key in unread:
      if key not in known:
        raise SpecError(f"{where} binds {key}, which no gin file reads; {gin_files.spelling_hint(key, known)}")

  def _validate_task(self, name: str, task: Mapping[str, Any]) -> None:
    where = f"Task {name!r}"
    if name in (MIXTURE, PRETRAIN):
      raise SpecError(f"{where}: {name!r} names the folder of multi-task and pretraining runs; rename the task.")
    unknown = set(task) - _TASK_KEYS
    if unknown:
      raise SpecError(f"{where}: unknown keys {sorted(unknown)}; the keys are {sorted(_TASK_KEYS)}.")
    _require(task, "name", where)
    evals = task.get("evals")
    if evals is None:
      _metrics(_require(task, "metric", where), where)
    else:
      if not isinstance(evals, dict) or not evals:
        raise SpecError(f"{where}: 'evals' maps a name to {{'name': SeqIO task, 'metric': ...}} for each task "
                        f"whose metrics the run writes; got {evals!r}.")
      for key, value in evals.items():
        _require(value, "name", f"{where}, eval {key!r}")
        _metrics(_require(value, "metric", f"{where}, eval {key!r}"), f"{where}, eval {key!r}")
    select = task.get("select_by")
    if select is not None and select not in (evals or {}):
      raise SpecError(f"{where}: 'select_by' {select!r} is not one of its 'evals' {list(evals or {})}.")

  def _validate_benchmark(self) -> None:
    benchmark = self.raw.get("benchmark")
    if benchmark is None:
      return
    tasks = _require(benchmark, "tasks", "The 'benchmark' section")
    name = _require(benchmark, "name", "The 'benchmark' section")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
      raise SpecError(f"The benchmark name {name!r} names its CSV and plot: use letters, digits, '_', '-' or '.'.")
    known = self.eval_names()
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
      raise SpecError(f"The 'benchmark' tasks {bad or tasks} are not evaluations of the spec; known: {known}.")

  # ---------------------------------------------------------------------------------------------- runs
  def method_names(self) -> list[str]:
    """The built-in methods the spec configures (the three per-task ones when it configures none), then its
    custom ones."""
    builtin = [m for m in BUILTIN if m in self.methods] or list(METHODS)
    return builtin + [m for m in self.methods if m not in BUILTIN]

  def runs(self) -> list[Run]:
    """Every run of every grid, once (grids may share runs, e.g. the default prompt length), in spec order.

    A multi-task method has one run per size and seed (task `mixture`); an ensemble one per task, size, prompt
    length and initialiser, whose members are the grid's seeds."""
    out: dict[Run, None] = {}
    for grid in self.grids:
      lengths = grid.get("prompt_lengths") or [self.defaults["prompt_length"]]
      inits = grid.get("prompt_inits") or [self.defaults["prompt_init"]]
      seeds = [int(s) for s in grid.get("seeds") or self.defaults["seeds"]]
      checkpoints = [None if c == DEFAULT_CHECKPOINT else c for c in grid.get("checkpoints") or [None]]
      for task, size, method, ckpt in itertools.product(grid.get("tasks") or list(self.tasks),
                                                        grid.get("sizes") or list(self.sizes),
                                                        grid.get("methods") or self.method_names(), checkpoints):
        prompts = [(int(n), i) for n, i in itertools.product(lengths, inits)] if method in PROMPTED else [(None, None)]
        if method == ENSEMBLE:
          for length, init in prompts:
            out[Run(task, size, method, 0, length, init, members=tuple(seeds), checkpoint=ckpt)] = None
          continue
        for seed, (length, init) in itertools.product(seeds, prompts):
          out[Run(MIXTURE if method == MULTI_TASK else task, size, method, seed, length, init,
                  checkpoint=ckpt)] = None
    return list(out)

  def members(self, run: Run) -> list[Run]:
    """The prompt tuning runs whose prompts (their latest checkpoints) a prompt ensemble evaluates together."""
    return [Run(run.task, run.size, "prompt_tuning", seed, run.prompt_length, run.prompt_init,
                checkpoint=run.checkpoint) for seed in run.members]

  def evals(self, run: Run) -> list[Eval]:
    """The evaluations a run writes: its task's (one, or the task's `evals`); a multi-task run's, each task's
    own under the SeqIO name its mixture gives it (`eval_tasks`, default the task's `name`)."""
    if run.method != MULTI_TASK:
      return self.task_evals(run.task)
    names = self.methods[MULTI_TASK].get("eval_tasks") or dict.fromkeys(self.tasks)
    return [dataclasses.replace(e, task_name=names[t] or e.task_name) for t in names for e in self.task_evals(t)]

  def task_evals(self, name: str) -> list[Eval]:
    task = self.tasks[name]
    entries = task.get("evals") or {name: task}
    return [Eval(key, e["name"], _metrics(e["metric"], f"Task {name!r}"), e.get("higher_is_better", True))
            for key, e in entries.items()]

  def eval_names(self) -> list[str]:
    """Every evaluation's name, in spec order."""
    return list(dict.fromkeys(e.name for t in self.tasks for e in self.task_evals(t)))

  def run_dir(self, run_id: str) -> str:
    return f"{self.output_dir}/{run_id}"

  def checkpoint(self, size: str, variant: str | None = None) -> str:
    """The size's pretrained checkpoint: given, or the last step of the sweep's own pretraining run; with
    `variant`, the checkpoint of that name (see `variant_checkpoint`)."""
    if variant is not None and variant != DEFAULT_CHECKPOINT:
      return self.variant_checkpoint(size, variant)
    given = self.sizes[size].get("checkpoint")
    if given:
      return given
    return f"{self.run_dir(f'{PRETRAIN}/{size}')}/checkpoint_{int(self.pretrain['steps'])}"

  # -------------------------------------------------------------------------------------------- commands
  def _merged(self, *parts: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's bindings updated by each part in turn."""
    merged: dict[str, Any] = {}
    for part in (self.raw.get("bindings", {}), *parts):
      merged.update(part)
    return merged

  def _read_by(self, files: Sequence[str], bindings: Mapping[str, Any], own: Mapping[str, Any], where: str
               ) -> dict[str, Any]:
    """The bindings a command's gin files read (the train / eval CLI refuses a macro they do not read): the
    spec's, a size's or a task's macros that they do not read are left out, as every command gets those; one of
    `own` (the bindings that `where`, a method or section, sets for its commands alone) is a SpecError."""
    if tuple(files) not in self._macros:
      self._macros[tuple(files)] = gin_files.macros(files, (), self._search_paths())
    found = self._macros[tuple(files)]
    if found is None:  # a gin file that is not on this machine: every binding goes, the CLI checks them
      return dict(bindings)
    unread = [k for k in own if gin_files.is_macro(k) and k not in found.read]
    if unread:
      raise SpecError(f"{where} binds {unread[0]}, which its gin files ({', '.join(files)}) do not read (the CLI "
                      "would refuse it): drop it from its 'bindings'.")
    return {k: v for k, v in bindings.items() if not gin_files.is_macro(k) or k in found.read}

  def _flags(self, files: Sequence[str], bindings: Mapping[str, Any]) -> tuple[str, ...]:
    """A command's flags: the search paths, the gin files and the bindings."""
    return (*self._search_path_flags(), *[f"--gin_file={f}" for f in files],
            *[f"--gin.{k}={gin_value(v)}" for k, v in bindings.items()])

  def _model_files(self, size: str, model_gin: str) -> tuple[str, ...]:
    return (model_gin, *self.sizes[size].get("gin_files", []), *self.raw.get("gin_files", []))

  def _search_paths(self) -> tuple[str, ...]:
    return tuple(self.raw.get("gin_search_paths") or ())

  def _search_path_flags(self) -> list[str]:
    paths = self._search_paths()
    return [f"--gin_search_paths={','.join(paths)}"] if paths else []

  def pretrain_commands(self) -> list[Command]:
    """Model tuning from scratch of each size without a `checkpoint` on the pretraining task."""
    if self.pretrain is None:
      return []
    out = []
    for size, cfg in self.sizes.items():
      if cfg.get("checkpoint"):
        continue
      run_id = f"{PRETRAIN}/{size}"
      own = {**self.pretrain.get("bindings", {}), **cfg.get("pretrain_bindings", {})}
      bindings = self._merged({"MODEL_DIR": self.run_dir(run_id), "INITIAL_CHECKPOINT_PATH": None,
                               "MIXTURE_OR_TASK_NAME": self.pretrain["task"],
                               "MIXTURE_OR_TASK_MODULE": self.pretrain.get("module"),
                               "TRAIN_STEPS": int(self.pretrain["steps"])}, cfg.get("bindings", {}), own)
      files = (*self._model_files(size, "models/t5_1_1.gin"), "runs/finetune.gin")
      flags = self._flags(files, self._read_by(files, bindings, own, f"The {PRETRAIN!r} section"))
      out.append(Command(run_id, size, "train", flags, self.run_dir(run_id), PRETRAIN_PHASE))
    return out

  def command(self, run: Run) -> Command:
    run_dir = self.run_dir(run.run_id)
    if run.method == "prompt_design":
      task = self.tasks[run.task]
      return self._eval_command(run, "models/t5_1_1.gin", ["baselines/prompt_design.gin"],
                                {"PROMPT_DESIGN_TASK": task["name"], "MIXTURE_OR_TASK_MODULE": task.get("module"),
                                 "SHOTS_SEED": run.seed})
    if run.method == ENSEMBLE:
      return self._eval_command(run, "models/t5_1_1_prompt.gin", ["serving/ensemble.gin"],
                                {"MIXTURE_OR_TASK_NAME": self.tasks[run.task]["name"],
                                 "MIXTURE_OR_TASK_MODULE": self.tasks[run.task].get("module"),
                                 "ENSEMBLE_PROMPTS": [self.run_dir(m.run_id) for m in self.members(run)],
                                 "PROMPT_LENGTH": run.prompt_length}, READS_RUNS_PHASE)
    files, run_gin, bindings = self.train_config(run)
    return Command(run.run_id, run.size, "train", self._flags((*files, run_gin), bindings), run_dir)

  def _eval_command(self, run: Run, model_gin: str, run_files: list[str], fixed: Mapping[str, Any],
                    phase: int = RUN_PHASE) -> Command:
    """The eval CLI on the task's validation split (or its `split`) with the run's pretrained checkpoint;
    an ensemble reads its members' latest checkpoints, so it runs after them (`READS_RUNS_PHASE`)."""
    task, size = self.tasks[run.task], self.sizes[run.size]
    run_dir, own = self.run_dir(run.run_id), self.methods.get(run.method, {}).get("bindings", {})
    bindings = self._merged({"CHECKPOINT_PATH": self.checkpoint(run.size, run.checkpoint),
                             "EVAL_OUTPUT_DIR": f"{run_dir}/inference_eval", **fixed,
                             "utils.DatasetConfig.split": task.get("split", "validation")},
                            size.get("bindings", {}), task.get("bindings", {}), own)
    files = (*self._model_files(run.size, model_gin), "runs/eval.gin", *run_files)
    flags = self._flags(files, self._read_by(files, bindings, own, f"Method {run.method!r}"))
    return Command(run.run_id, run.size, "eval", flags, run_dir, phase)

  def train_config(self, run: Run) -> tuple[tuple[str, ...], str, dict[str, Any]]:
    """A training run's (gin files of the model, run gin, bindings): those the gin files read (`_read_by`), which
    win over the files'."""
    size, method = self.sizes[run.size], self.methods.get(run.method, {})
    if run.method == MULTI_TASK:  # the mixture's own bindings (e.g. TASK_FEATURE_LENGTHS) are the method's
      task = {"name": method["mixture"], "module": method.get("module")}
    else:
      task = self.tasks[run.task]
    fixed = {"MODEL_DIR": self.run_dir(run.run_id),
             "INITIAL_CHECKPOINT_PATH": self.checkpoint(run.size, run.checkpoint),
             "MIXTURE_OR_TASK_NAME": task["name"], "MIXTURE_OR_TASK_MODULE": task.get("module"),
             "RANDOM_SEED": run.seed, "SHUFFLE_SEED": run.seed}
    if run.method in ("model_tuning", MULTI_TASK):
      files, run_gin = self._model_files(run.size, "models/t5_1_1.gin"), "runs/finetune.gin"
    elif run.method == "prompt_tuning":
      init = run.prompt_init if run.prompt_init.endswith(".gin") else f"prompts/{run.prompt_init}.gin"
      files, run_gin = (*self._model_files(run.size, "models/t5_1_1_prompt.gin"), init), "runs/prompt_finetune.gin"
      fixed["PROMPT_LENGTH"] = run.prompt_length
    else:
      files = (*self._model_files(run.size, method.get("model_gin", "models/t5_1_1.gin")),
               *method.get("gin_files", []))
      run_gin = method["run_gin"]
    own = method.get("bindings", {})
    merged = self._merged(fixed, size.get("bindings", {}), task.get("bindings", {}), own)
    bindings = self._read_by((*files, run_gin), merged, own, f"Method {run.method!r}")
    if run.checkpoint is not None and isinstance(bindings.get("TRAIN_STEPS"), int):
      bindings["TRAIN_STEPS"] += self._step_shift(run.size, run.checkpoint)
    return files, run_gin, bindings

  def model_gin(self, size: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(gin files, bindings, search paths) that define the size's model alone (no prompt, no run)."""
    files = self._model_files(size, "models/t5_1_1.gin")
    bindings = tuple(f"{k} = {gin_value(v)}" for k, v in self.sizes[size].get("bindings", {}).items())
    return files, bindings, tuple(self.raw.get("gin_search_paths") or ())

  def commands(self) -> list[Command]:
    """Pretraining and adaptation first (the other runs start from their checkpoints), then every run (see
    `Command.phase`)."""
    return self.pretrain_commands() + self.adapt_commands() + [self.command(r) for r in self.runs()]

  # ---------------------------------------------------------------------------------------- checkpoint variants
  # A size's `checkpoints` maps names to other checkpoints of it, e.g. {"span_corruption": ".../checkpoint_1000000"}.
  # The `adapt` section trains every weight of each size's checkpoint (`from`: a variant name; default: the
  # size's `checkpoint`) on `task` for `steps` more steps with `run_gin` (default runs/lm_adapt.gin) in
  # pretrain/adapt/<size>, saving every gcd of the `keep` steps and keeping them all; each `keep` entry,
  # {name: steps}, names the checkpoint after that many steps. A grid's `checkpoints` lists the names its points
  # start from ("default": the size's `checkpoint`). TRAIN_STEPS (absolute) counts from the size's `checkpoint`:
  # a run from a variant trains as many steps, so its TRAIN_STEPS moves by the difference of the two steps.
  def variant_checkpoint(self, size: str, name: str) -> str:
    """The checkpoint that `name` stands for in `size`: one of its `checkpoints`, or an adaptation step."""
    given = self.sizes[size].get("checkpoints", {})
    if name in given:
      return given[name]
    keep = (self.adapt or {}).get("keep", {})
    if name in keep:
      start = self.checkpoint(size, self.adapt.get("from"))
      return f"{self.run_dir(f'{PRETRAIN}/{ADAPT}/{size}')}/checkpoint_{checkpoint_step(start) + int(keep[name])}"
    raise SpecError(f"Size {size!r} has no checkpoint named {name!r}: name it under the size's 'checkpoints' or "
                    f"the 'adapt' section's 'keep' (known: {[DEFAULT_CHECKPOINT, *given, *keep]}).")

  def _step_shift(self, size: str, name: str) -> int:
    return checkpoint_step(self.checkpoint(size, name)) - checkpoint_step(self.checkpoint(size))

  def adapt_commands(self) -> list[Command]:
    """Per size: its checkpoint trained `steps` more on the adaptation task, every `keep` step saved and kept."""
    if self.adapt is None:
      return []
    steps, keep = int(self.adapt["steps"]), [int(v) for v in self.adapt.get("keep", {}).values()]
    out = []
    for size, cfg in self.sizes.items():
      run_id = f"{PRETRAIN}/{ADAPT}/{size}"
      start = self.checkpoint(size, self.adapt.get("from"))
      fixed = {"MODEL_DIR": self.run_dir(run_id), "INITIAL_CHECKPOINT_PATH": start,
               "MIXTURE_OR_TASK_NAME": self.adapt["task"], "MIXTURE_OR_TASK_MODULE": self.adapt.get("module"),
               "TRAIN_STEPS": checkpoint_step(start) + steps, "SAVE_PERIOD": math.gcd(steps, *keep),
               "KEEP_CHECKPOINTS": None}
      files = (*self._model_files(size, "models/t5_1_1.gin"), self.adapt.get("run_gin", "runs/lm_adapt.gin"))
      own = self.adapt.get("bindings", {})
      bindings = self._merged(cfg.get("bindings", {}), own, fixed)
      flags = self._flags(files, self._read_by(files, bindings, own, f"The {ADAPT!r} section"))
      out.append(Command(run_id, size, "train", flags, self.run_dir(run_id), ADAPT_PHASE))
    return out

  def _validate_checkpoints(self) -> None:
    if self.adapt is not None:
      for key in ("task", "steps"):
        _require(self.adapt, key, f"The {ADAPT!r} section")
      keep = self.adapt.get("keep", {})
      bad = {k: v for k, v in keep.items()
             if not 0 < int(v) <= int(self.adapt["steps"]) or not re.fullmatch(r"[A-Za-z0-9_.-]+", k)}
      if bad:
        raise SpecError(f"The {ADAPT!r} section keeps {bad}: each needs steps in 1..steps={self.adapt['steps']} "
                        "and a name of letters, digits, '_', '-' or '.'.")
      if self.adapt.get("from") in keep:
        raise SpecError(f"The {ADAPT!r} section adapts from {self.adapt['from']!r}, one of its own 'keep' "
                        "names; 'from' names the checkpoint it starts from (a size's 'checkpoints' entry).")
      for size in self.sizes:
        checkpoint_step(self.checkpoint(size, self.adapt.get("from")))
    for size, cfg in self.sizes.items():
      bad = [n for n in cfg.get("checkpoints", {}) if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
      if bad:
        raise SpecError(f"Size {size!r} names checkpoints {bad}: use letters, digits, '_', '-' or '.' (they name "
                        "run folders).")
    for grid in self.grids:
      names = [n for n in grid.get("checkpoints", []) if n != DEFAULT_CHECKPOINT]
      for name, size in itertools.product(names, grid.get("sizes") or list(self.sizes)):
        self._step_shift(size, name)


def _substitute(value: Any, names: Mapping[str, str]) -> Any:
  if isinstance(value, str):
    for k, v in names.items():
      value = value.replace("{" + k + "}", v)
    return value
  if isinstance(value, list):
    return [_substitute(v, names) for v in value]
  if isinstance(value, dict):
    return {k: _substitute(v, names) for k, v in value.items()}
  return value


def checkpoint_step(path: str) -> int:
  """The step of a `.../checkpoint_<step>` path (T5X's naming)."""
  match = re.search(r"checkpoint_(\d+)/*$", path)
  if not match:
    raise SpecError(f"Cannot tell the step of checkpoint {path!r}: a checkpoint variant, or one that is adapted, "
                    "needs a path ending in checkpoint_<step> (T5X's naming).")
  return int(match.group(1))
