"""Where a sweep's commands run: `local` (CLI subprocesses on this machine) or `tpu` (`launch.tpu run` jobs)."""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

from etils import epath

from prompt_tuning.sweeps.spec import PRETRAIN, Command, Spec

DONE_FILE = "sweep_run.json"  # in each run folder once its command succeeded


def is_done(command: Command) -> bool:
  path = epath.Path(command.run_dir) / DONE_FILE
  try:
    return path.exists() and json.loads(path.read_text()).get("returncode") == 0
  except Exception as e:  # pylint: disable=broad-except  (gfile raises TensorFlow errors for gs:// paths)
    raise ValueError(f"Cannot read {path} ({type(e).__name__}); check access to the output folder, or pass "
                     "--output_dir with a local folder to print the commands offline.") from None


def _phases(spec: Spec) -> list[list[Command]]:
  """Pretraining, then the runs that start from its checkpoints."""
  commands = spec.commands()
  first = [c for c in commands if c.run_id.startswith(f"{PRETRAIN}/")]
  return [p for p in (first, [c for c in commands if c not in first]) if p]


# ------------------------------------------------------------------------------------------------------ local
def local_argv(command: Command) -> list[str]:
  return [sys.executable, "-m", f"prompt_tuning.{command.module}", *command.flags]


def run_local_command(command: Command, env: dict[str, str] | None = None) -> int:
  """Run one command, its output in `<run_dir>/sweep.log`; marks the folder done when it succeeds."""
  run_dir = epath.Path(command.run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  with open(run_dir / "sweep.log", "w") as log:
    code = subprocess.run(local_argv(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                          check=False).returncode
  record = {"returncode": code, "seconds": round(time.time() - start, 1), "argv": local_argv(command)}
  if code == 0:
    (run_dir / DONE_FILE).write_text(json.dumps(record, indent=1))
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
  """The `python -m launch.tpu run` call for one command, in the foreground so that a TPU runs its jobs in turn."""
  cfg = spec.raw.get("tpu") or {}
  if not cfg.get("zone"):
    raise ValueError("The spec's 'tpu' section needs 'zone' for the tpu backend.")
  argv = [sys.executable, "-m", "launch.tpu", "run", f"--name={tpu_for(spec, command.size, tpu_name)}",
          f"--zone={cfg['zone']}"]
  if cfg.get("project"):
    argv.append(f"--project={cfg['project']}")
  argv += [f"--env={e}" for e in cfg.get("env", [])]
  argv += [f"--job={command.run_id.replace('/', '.')}", f"--module=prompt_tuning.{command.module}",
           "--foreground", "--", *command.flags]
  return argv


def run_tpu(spec: Spec, dry_run: bool = False, tpu_name: str | None = None, cwd: str | None = None,
            runner: Callable[[Sequence[str]], int] | None = None) -> list[str]:
  """Each TPU runs its commands one after another (TPUs in parallel); returns the failed run ids.

  `cwd` must be a checkout with `launch/` (the default is this one's root)."""
  cwd = cwd or os.fspath(epath.Path(__file__).parents[2])
  runner = runner or (lambda argv: subprocess.run(list(argv), cwd=cwd, check=False).returncode)
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
        code = runner(argv)
        if code == 0:
          epath.Path(c.run_dir).mkdir(parents=True, exist_ok=True)
          (epath.Path(c.run_dir) / DONE_FILE).write_text(json.dumps({"returncode": 0, "argv": argv}))
        else:
          bad.append(c.run_id)
      return bad

    with concurrent.futures.ThreadPoolExecutor(max(1, len(queues))) as pool:
      for bad in pool.map(drain, queues.values()):
        failed.extend(bad)
  return failed
