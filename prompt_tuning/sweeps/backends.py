"""Where a sweep's commands run: `local` (CLI subprocesses on this machine) or `tpu` (gcloud ssh jobs on Cloud
TPU VMs, `prompt_tuning.launch.tpu`). Standard library only for local folders (etils for gs:// and other URIs),
so that printing the commands (`--dry-run`) needs neither JAX nor TensorFlow."""
from __future__ import annotations

import concurrent.futures
import json
import logging
import pathlib
import shlex
import subprocess
import sys
import time
from typing import IO, Any, Callable, Sequence

from prompt_tuning.launch import tpu
from prompt_tuning.sweeps.spec import Command, Spec

DONE_FILE = "sweep_run.json"  # in each run folder once its command succeeded


def as_path(path: str) -> Any:
  """A `pathlib.Path` for a local folder, an `etils.epath.Path` for a URI such as gs://bucket/x."""
  if "://" not in path:
    return pathlib.Path(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def mark_done(command: Command, record: dict[str, Any]) -> None:
  run_dir = as_path(command.run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / DONE_FILE).write_text(json.dumps(record, indent=1))


def is_done(command: Command) -> bool:
  path = as_path(command.run_dir) / DONE_FILE
  try:
    return path.exists() and json.loads(path.read_text()).get("returncode") == 0
  except Exception as e:  # pylint: disable=broad-except  (gfile raises TensorFlow errors for gs:// paths)
    raise ValueError(f"Cannot read {path} ({type(e).__name__}); check access to the output folder, or pass "
                     "--output_dir with a local folder to print the commands offline.") from None


def _phases(spec: Spec) -> list[list[Command]]:
  """The commands by `Command.phase`: pretraining, then adaptation, then the runs that start from their
  checkpoints, then the runs that read theirs (prompt ensembles)."""
  phases: dict[int, list[Command]] = {}
  for c in spec.commands():
    phases.setdefault(c.phase, []).append(c)
  return [phases[p] for p in sorted(phases)]


# ------------------------------------------------------------------------------------------------------ local
def local_argv(command: Command) -> list[str]:
  return [sys.executable, "-m", f"prompt_tuning.{command.module}", *command.flags]


def run_local_command(command: Command, env: dict[str, str] | None = None,
                      execute: Callable[[list[str], IO[str]], int] | None = None) -> int:
  """Run one command (by default a subprocess; `execute(argv, log)` runs it otherwise), its output in
  `<run_dir>/sweep.log`; marks the folder done when it succeeds."""
  run_dir = as_path(command.run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  with open(run_dir / "sweep.log", "w") as log:
    if execute is not None:
      code = execute(local_argv(command), log)
    else:
      code = subprocess.run(local_argv(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
  record = {"returncode": code, "seconds": round(time.time() - start, 1), "argv": local_argv(command)}
  if code == 0:
    mark_done(command, record)
  return code


def run_local(spec: Spec, jobs: int = 1, dry_run: bool = False, env: dict[str, str] | None = None,
              runner: Callable[[Command], int] | None = None) -> list[str]:
  """Run every command not done yet, `jobs` at a time (pretraining first); returns the failed run ids."""
  runner = runner or (lambda c: run_local_command(c, env))
  failed: list[str] = []
  for phase in _phases(spec):
    todo = [c for c in phase if not is_done(c)]
    for c in phase:
      if c not in todo:
        logging.info("done already: %s", c.run_id)
    if dry_run:
      for c in todo:
        print(shlex.join(local_argv(c)))
      continue

    def one(c: Command) -> tuple[Command, int, float]:
      start = time.time()
      return c, runner(c), time.time() - start

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
      for c, code, seconds in pool.map(one, todo):
        status = "ok" if code == 0 else f"FAILED (exit {code}; see {c.run_dir}/sweep.log)"
        print(f"[{time.strftime('%H:%M:%S')}] {c.run_id}: {status} in {seconds:.0f}s", flush=True)
        if code:
          failed.append(c.run_id)
  return failed


# -------------------------------------------------------------------------------------------------------- tpu
def tpu_for(spec: Spec, size: str, tpu_name: str | None = None) -> str:
  if tpu_name:
    return tpu_name
  tpus = (spec.raw.get("tpu") or {}).get("tpus", {})
  if size not in tpus:
    raise ValueError(f"No TPU for size {size!r}: add it to the spec's tpu.tpus, or pass --tpu_name.")
  return tpus[size]


def tpu_argv(spec: Spec, command: Command, tpu_name: str | None = None) -> list[str]:
  """The gcloud ssh command (`prompt_tuning.launch.tpu` run) that runs one command on every worker of its TPU,
  in the foreground so that a TPU runs its jobs in turn."""
  cfg = spec.raw.get("tpu") or {}
  if not cfg.get("zone"):
    raise ValueError("The spec's 'tpu' section needs 'zone' for the tpu backend.")
  (ssh,) = tpu.run_commands(tpu_for(spec, command.size, tpu_name), cfg["zone"], command.run_id.replace("/", "."),
                            command.flags, project=cfg.get("project"), module=f"prompt_tuning.{command.module}",
                            env=cfg.get("env", []), foreground=True)
  return ssh


def run_tpu(spec: Spec, dry_run: bool = False, tpu_name: str | None = None,
            runner: Callable[[Sequence[str]], int] | None = None) -> list[str]:
  """Each TPU runs its commands one after another (TPUs in parallel); returns the failed run ids."""
  runner = runner or (lambda argv: tpu.execute([argv], dry_run=False))
  failed: list[str] = []
  for phase in _phases(spec):
    queues: dict[str, list[tuple[Command, list[str]]]] = {}
    for c in phase:
      if not is_done(c):
        queues.setdefault(tpu_for(spec, c.size, tpu_name), []).append((c, tpu_argv(spec, c, tpu_name)))
    if dry_run:
      for queue in queues.values():
        for _, argv in queue:
          print(shlex.join(argv))
      continue

    def drain(queue: list[tuple[Command, list[str]]]) -> list[str]:
      bad = []
      for c, argv in queue:
        if runner(argv) == 0:
          mark_done(c, {"returncode": 0, "argv": argv})
        else:
          bad.append(c.run_id)
      return bad

    with concurrent.futures.ThreadPoolExecutor(max(1, len(queues))) as pool:
      for bad in pool.map(drain, queues.values()):
        failed.extend(bad)
  return failed
