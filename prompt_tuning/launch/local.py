r"""Run one CLI command as N `jax.distributed` processes on this machine (CPU, gloo collectives).

  python -m launch.local --num_processes=2 --log_dir=/tmp/mh_logs -- \
    python -m prompt_tuning.train --gin_file=... --gin.MODEL_DIR="'/tmp/run'"

Process i gets `--multiprocess --coordinator_address=localhost:PORT --process_count=N --process_index=i`
appended (the flags of the train / eval / infer CLIs); process 0 hosts the coordinator. Each process reads its
own shard of the input, exactly as one host of a pod slice does. When one process fails the others are stopped,
so a crash never leaves the rest blocked in a collective. From an installed package:
`python -m prompt_tuning.launch.local ...`.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping, Sequence

from prompt_tuning.launch import distributed_flags, strip_dashes

GRACE_S = 10.0  # after SIGTERM, how long a process may take to stop before SIGKILL


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_commands(command: Sequence[str], num_processes: int, port: int) -> list[list[str]]:
  if num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be at least 1.")
  if not command:
    raise ValueError("No command given: put it after `--`, e.g. `-- python -m prompt_tuning.train ...`.")
  return [[*command, *distributed_flags(f"localhost:{port}", num_processes, i)] for i in range(num_processes)]


def process_env(base: Mapping[str, str], platform: str = "cpu", devices_per_process: int = 1) -> dict[str, str]:
  """`JAX_PLATFORMS=platform`; on CPU, `devices_per_process` simulated devices per process."""
  env = dict(base, JAX_PLATFORMS=platform)
  if platform == "cpu" and devices_per_process > 1:
    flag = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["XLA_FLAGS"] = " ".join(filter(None, [base.get("XLA_FLAGS", ""), flag]))
  return env


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  running = [p for p in procs if p.poll() is None]
  for p in running:
    p.send_signal(signal.SIGTERM)
  deadline = time.time() + GRACE_S
  for p in running:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(command: Sequence[str], num_processes: int = 2, *, port: int | None = None,
           log_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
           platform: str = "cpu", devices_per_process: int = 1, cwd: str | os.PathLike | None = None,
           timeout: float | None = None) -> list[int]:
  """Start the processes, wait for all; returns their exit codes (the others are stopped after a failure).

  With `log_dir`, process i writes stdout and stderr to `log_dir/process_<i>.log`; otherwise they inherit ours.
  Raises `subprocess.TimeoutExpired` (after stopping every process) when `timeout` seconds pass.
  """
  commands = process_commands(command, num_processes, port or free_port())
  full_env = process_env(os.environ if env is None else env, platform, devices_per_process)
  logs = []
  if log_dir is not None:
    pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
    logs = [open(pathlib.Path(log_dir) / f"process_{i}.log", "w") for i in range(num_processes)]
  procs: list[subprocess.Popen] = []
  try:
    for i, cmd in enumerate(commands):
      out = logs[i] if logs else None
      procs.append(subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT if logs else None))
    deadline = None if timeout is None else time.time() + timeout
    while None in (codes := [p.poll() for p in procs]):
      if any(codes):
        break
      if deadline is not None and time.time() > deadline:
        raise subprocess.TimeoutExpired(commands[0], timeout)
      time.sleep(0.2)
    _stop(procs)  # after a failure: the others, before their exit codes are read
    return [p.returncode for p in procs]
  finally:
    _stop(procs)
    for f in logs:
      f.close()


def main(argv: Sequence[str] | None = None, prog: str = "python -m prompt_tuning.launch.local") -> int:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=None, help="Coordinator port (default: a free one).")
  parser.add_argument("--devices_per_process", type=int, default=1, help="Simulated CPU devices per process.")
  parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for the processes.")
  parser.add_argument("--log_dir", default=None, help="Write process_<i>.log here instead of the terminal.")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="Print each process's command and exit.")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run in every process.")
  args = parser.parse_args(argv)
  command = strip_dashes(args.command)
  port = args.port or free_port()
  if args.dry_run:
    for cmd in process_commands(command, args.num_processes, port):
      print(shlex.join(cmd))
    return 0
  codes = launch(command, args.num_processes, port=port, log_dir=args.log_dir, platform=args.platform,
                 devices_per_process=args.devices_per_process)
  for i, code in enumerate(codes):
    if code:
      print(f"process {i} exited with {code}" + (f"; see {args.log_dir}/process_{i}.log" if args.log_dir else ""))
  return max((abs(c) for c in codes), default=0)


if __name__ == "__main__":
  sys.exit(main())
