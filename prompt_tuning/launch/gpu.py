r"""Multi-node GPU runs through `jax.distributed`: one process per node, coordinated by process 0.

  # On each node (or under srun): resolve the coordinator, count and index, then exec the CLI.
  python -m launch.gpu run -- --gin_file=models/t5_1_1_base_prompt.gin ... --gin.MODEL_DIR="'/shared/run'"
  # A SLURM batch script for N nodes (printed with --dry-run, else written and submitted with sbatch).
  python -m launch.gpu sbatch --nodes=4 --gpus_per_node=8 --job_name=rte --dry-run -- --gin_file=...

`run` takes the coordinator address, process count and process index from its flags, else from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else from SLURM (SLURM_PROCID, SLURM_NTASKS and
the first host of SLURM_STEP_NODELIST or SLURM_JOB_NODELIST, at --port). From an installed package:
`python -m prompt_tuning.launch.gpu ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shlex
import string
import subprocess
import sys
from typing import Mapping, Sequence

from prompt_tuning.launch import distributed_flags, source_checkout, strip_dashes

TEMPLATE = pathlib.Path(__file__).with_name("sbatch.template")
REPO_ROOT = source_checkout()  # None when installed from a wheel
DEFAULT_PORT = 12345


@dataclasses.dataclass(frozen=True)
class Distributed:
  coordinator_address: str
  num_processes: int
  process_id: int

  def flags(self) -> list[str]:
    """The train / eval / infer CLI flags that start `jax.distributed` (prompt_tuning/cli.py)."""
    return distributed_flags(self.coordinator_address, self.num_processes, self.process_id)


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-010,012],cpu1' -> 'gpu003', 'a1,a2' -> 'a1'."""
  match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\]([^,]*))?", nodelist.strip())
  if not match:
    raise ValueError(f"Cannot read a host from the SLURM node list {nodelist!r}.")
  prefix, ranges, suffix = match.groups()
  if ranges is None:
    return prefix
  return prefix + re.split(r"[,-]", ranges)[0] + suffix


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, port: int = DEFAULT_PORT,
            env: Mapping[str, str] | None = None) -> Distributed:
  """Each value from its argument, else the JAX_* variable, else SLURM's; raises naming what is missing."""
  env = os.environ if env is None else env
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  address = (coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
             or (f"{first_host(nodelist)}:{port}" if nodelist else None))
  count = num_processes if num_processes is not None else _int(env, "JAX_NUM_PROCESSES", "SLURM_NTASKS")
  index = process_id if process_id is not None else _int(env, "JAX_PROCESS_ID", "SLURM_PROCID")
  missing = [name for name, value in (("coordinator address (--coordinator_address, JAX_COORDINATOR_ADDRESS or "
                                       "SLURM_STEP_NODELIST)", address),
                                      ("process count (--num_processes, JAX_NUM_PROCESSES or SLURM_NTASKS)", count),
                                      ("process index (--process_id, JAX_PROCESS_ID or SLURM_PROCID)", index))
             if value is None]
  if missing:
    raise ValueError("Cannot start jax.distributed without the " + "; the ".join(missing) + ".")
  if not 0 <= index < count:
    raise ValueError(f"Process index {index} is outside [0, {count}); check the process count and index.")
  return Distributed(address, count, index)


def _int(env: Mapping[str, str], *names: str) -> int | None:
  for name in names:
    if env.get(name, "") != "":
      try:
        return int(env[name])
      except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer.") from None
  return None


def cli_command(dist: Distributed, cli_args: Sequence[str], module: str = "prompt_tuning.train",
                python: str = "python") -> list[str]:
  return [python, "-m", module, *cli_args, *dist.flags()]


def render_sbatch(cli_args: Sequence[str], nodes: int, gpus_per_node: int = 8, job_name: str = "prompt_tuning",
                  time: str = "24:00:00", cpus_per_task: int = 16, partition: str | None = None,
                  account: str | None = None, output: str = "%x-%j.out", module: str = "prompt_tuning.train",
                  setup: str = "", workdir: str | None = None, port: int = DEFAULT_PORT,
                  term_seconds: int = 300) -> str:
  """The sbatch script (sbatch.template) for `nodes` nodes; `setup` runs first on the batch host (e.g.
  activating a virtual environment); `workdir` defaults to this checkout, else (installed) the current folder."""
  workdir = workdir or str(REPO_ROOT or pathlib.Path.cwd())
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"nodes={nodes} and gpus_per_node={gpus_per_node} must be at least 1.")
  extra = [f"#SBATCH --{key}={value}" for key, value in (("partition", partition), ("account", account)) if value]
  return string.Template(TEMPLATE.read_text()).substitute(
      job_name=job_name, nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, time=time,
      output=output, term_seconds=term_seconds, extra_directives="\n".join(extra), workdir=shlex.quote(workdir),
      setup=setup, module=module, port=port, cli_args=shlex.join(cli_args))


def parser(prog: str = "python -m prompt_tuning.launch.gpu") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="subcommand", required=True)
  r = sub.add_parser("run", help="Start this node's process (flags, else JAX_* variables, else SLURM).")
  r.add_argument("--coordinator_address", default=None, help="host:port of process 0.")
  r.add_argument("--num_processes", type=int, default=None)
  r.add_argument("--process_id", type=int, default=None)
  r.add_argument("--port", type=int, default=DEFAULT_PORT, help="Coordinator port when the host comes from SLURM.")
  r.add_argument("--module", default="prompt_tuning.train", help="prompt_tuning.train|eval|infer")
  r.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="Print the command only.")
  r.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the CLI's gin flags.")
  s = sub.add_parser("sbatch", help="Render (and submit) a SLURM batch script.")
  s.add_argument("--nodes", type=int, required=True)
  s.add_argument("--gpus_per_node", type=int, default=8)
  s.add_argument("--cpus_per_task", type=int, default=16)
  s.add_argument("--job_name", default="prompt_tuning")
  s.add_argument("--time", default="24:00:00", help="Time limit, HH:MM:SS.")
  s.add_argument("--partition", default=None)
  s.add_argument("--account", default=None)
  s.add_argument("--output", default="%x-%j.out", help="SLURM log file pattern.")
  s.add_argument("--setup", default="", help="Shell line run first, e.g. 'source .venv/bin/activate'.")
  s.add_argument("--workdir", default=None, help="Folder the job runs in, on a filesystem every node sees "
                 "(default: this checkout, else the current folder).")
  s.add_argument("--port", type=int, default=DEFAULT_PORT)
  s.add_argument("--module", default="prompt_tuning.train")
  s.add_argument("--script", default=None, help="Where to write the script (default: <job_name>.sbatch).")
  s.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="Print the script only.")
  s.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the CLI's gin flags.")
  return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m prompt_tuning.launch.gpu") -> int:
  args = parser(prog).parse_args(argv)
  cli_args = strip_dashes(args.cli_args)
  try:
    if args.subcommand == "run":
      dist = resolve(args.coordinator_address, args.num_processes, args.process_id, args.port)
      command = cli_command(dist, cli_args, args.module, python=sys.executable)
      if args.dry_run:
        print(shlex.join(command))
        return 0
      os.execv(command[0], command)  # the CLI replaces us, so SLURM's signals reach it directly
    script = render_sbatch(cli_args, args.nodes, args.gpus_per_node, args.job_name, args.time, args.cpus_per_task,
                           args.partition, args.account, args.output, args.module, args.setup, args.workdir,
                           args.port)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = pathlib.Path(args.script or f"{args.job_name}.sbatch")
  if args.dry_run:
    print(script, end="")
    print(f"# then: sbatch {shlex.quote(str(path))}")
    return 0
  path.write_text(script)
  print(f"wrote {path}", file=sys.stderr)
  return subprocess.run(["sbatch", str(path)], check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
