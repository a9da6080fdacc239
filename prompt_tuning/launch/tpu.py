r"""Cloud TPU VMs and pod slices through gcloud: create, install, run, logs, stop, delete.

  python -m launch.tpu create  --name=pt --zone=europe-west4-a --accelerator_type=v3-32 --spot
  python -m launch.tpu install --name=pt --zone=europe-west4-a          # this checkout, on every worker
  python -m launch.tpu run     --name=pt --zone=europe-west4-a --job=rte -- \
      --gin_file=models/t5_1_1_xl_prompt.gin --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'gs://bucket/rte'" ...
  python -m launch.tpu logs    --name=pt --zone=europe-west4-a --job=rte
  python -m launch.tpu stop    --name=pt --zone=europe-west4-a [--force]
  python -m launch.tpu delete  --name=pt --zone=europe-west4-a

From an installed package: `python -m prompt_tuning.launch.tpu ...` (`install` then needs --pip or --source).

Every subcommand takes --dry-run: it prints the exact commands (shell-quoted, one a line) and runs nothing.
A pod slice has one VM per host: `install`, `run` and `stop` go to every worker (`--worker=all`), and the job
starts with `--multiprocess`, so `jax.distributed` finds the other hosts through the TPU metadata.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Sequence

from prompt_tuning.launch import source_checkout, strip_dashes

REPO_ROOT = source_checkout()  # None when installed from a wheel
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
DEFAULT_VERSION = "tpu-ubuntu2204-base"
JOBS_DIR = "~/jobs"  # on each worker: <job>.log
REMOTE_SOURCE = "prompt_tuning"  # the checkout's folder in the workers' home directory
CLI_PATTERN = "[p]rompt_tuning\\.(train|eval|infer)"  # '[p]' so that pkill does not match its own shell


def _common(zone: str, project: str | None) -> list[str]:
  return [f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def ssh(name: str, zone: str, command: str, worker: str = "all", project: str | None = None) -> list[str]:
  return [*GCLOUD_TPU, "ssh", name, *_common(zone, project), f"--worker={worker}", f"--command={command}"]


def create_commands(name: str, zone: str, accelerator_type: str, version: str = DEFAULT_VERSION,
                    spot: bool = False, project: str | None = None) -> list[list[str]]:
  """A TPU VM (e.g. v3-8) or pod slice (e.g. v4-64); `spot` asks for preemptible Spot capacity."""
  return [[*GCLOUD_TPU, "create", name, *_common(zone, project), f"--accelerator-type={accelerator_type}",
           f"--version={version}", *(["--spot"] if spot else [])]]


def install_commands(name: str, zone: str, project: str | None = None, source: str | None = None,
                     pip: str | None = None, archive: str | None = None) -> list[list[str]]:
  """Install the package with its TPU extras on every worker: a pip requirement (`pip`), or a git checkout
  (`source`, default this one) packed with `git archive`, copied over and installed editable."""
  if pip:
    return [ssh(name, zone, f"python3 -m pip install -U {shlex.quote(pip)}", project=project)]
  source = source or (str(REPO_ROOT) if REPO_ROOT else None)
  if not source:
    raise ValueError("This package is installed, not a checkout: give --source=CHECKOUT or --pip=REQUIREMENT.")
  archive = archive or f"/tmp/{name}-{REMOTE_SOURCE}.tar.gz"
  remote = f"{REMOTE_SOURCE}.tar.gz"
  unpack = (f"rm -rf {REMOTE_SOURCE} && mkdir {REMOTE_SOURCE} && tar xzf {remote} -C {REMOTE_SOURCE} && "
            f"python3 -m pip install -U -e './{REMOTE_SOURCE}[tpu]'")
  return [["git", "-C", source, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
          [*GCLOUD_TPU, "scp", archive, f"{name}:{remote}", *_common(zone, project), "--worker=all"],
          ssh(name, zone, unpack, project=project)]


def job_command(job: str, cli_args: Sequence[str], module: str = "prompt_tuning.train",
                env: Sequence[str] = (), foreground: bool = False) -> str:
  """The shell line each worker runs: the CLI with `--multiprocess`, its output in ~/jobs/<job>.log.

  Detached (default) it survives the ssh session; `foreground` streams the output and returns with the job.
  """
  for pair in env:
    if "=" not in pair:
      raise ValueError(f"--env {pair!r} must be NAME=VALUE.")
  _check_job(job)
  exports = "".join(f"export {k}={shlex.quote(v)} && " for k, v in (p.split("=", 1) for p in env))
  cli = shlex.join(["python3", "-m", module, *cli_args, "--multiprocess"])
  log = f"{JOBS_DIR}/{job}.log"
  if foreground:
    return f"mkdir -p {JOBS_DIR} && {exports}set -o pipefail && {cli} 2>&1 | tee {log}"
  return f"mkdir -p {JOBS_DIR} && {exports}setsid nohup {cli} > {log} 2>&1 < /dev/null &"


def _check_job(job: str) -> None:
  if not job or not all(c.isalnum() or c in "-_." for c in job):
    raise ValueError(f"--job={job!r} must be a non-empty name of letters, digits, '-', '_' or '.'.")


def run_commands(name: str, zone: str, job: str, cli_args: Sequence[str], project: str | None = None,
                 module: str = "prompt_tuning.train", env: Sequence[str] = (),
                 foreground: bool = False) -> list[list[str]]:
  """Start a train / eval / infer job with these gin flags on every worker of the slice."""
  if not cli_args:
    raise ValueError("No gin flags: put them after `--`, e.g. `-- --gin_file=runs/prompt_finetune.gin ...`.")
  return [ssh(name, zone, job_command(job, cli_args, module, env, foreground), project=project)]


def logs_commands(name: str, zone: str, job: str, worker: str = "0", project: str | None = None,
                  follow: bool = True) -> list[list[str]]:
  """Stream (or, without `follow`, print) a job's log from one worker (worker 0 writes the summaries)."""
  _check_job(job)
  return [ssh(name, zone, f"tail -n +1 {'-F ' if follow else ''}{JOBS_DIR}/{job}.log", worker, project)]


def stop_commands(name: str, zone: str, project: str | None = None, force: bool = False) -> list[list[str]]:
  """SIGTERM the CLIs on every worker (a training job saves a checkpoint and exits); `force` SIGKILLs them and
  frees the TPU from any process still holding it (the 'TPU in use' error after a crash)."""
  if not force:
    return [ssh(name, zone, f"pkill -TERM -f '{CLI_PATTERN}'; true", project=project)]
  release = ("sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | xargs -r sudo kill -9; "
             "sudo rm -f /tmp/libtpu_lockfile")
  return [ssh(name, zone, f"pkill -KILL -f '{CLI_PATTERN}'; {release}; true", project=project)]


def delete_commands(name: str, zone: str, project: str | None = None) -> list[list[str]]:
  return [[*GCLOUD_TPU, "delete", name, *_common(zone, project), "--quiet"]]


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Print (dry run) or run the commands in order, stopping at the first failure; returns the exit code."""
  for cmd in commands:
    if dry_run:
      print(shlex.join(cmd))
      continue
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
      code = subprocess.run(list(cmd), check=False).returncode
    except FileNotFoundError:
      print(f"error: {cmd[0]!r} is not on PATH; install the Google Cloud CLI (gcloud) and log in.", file=sys.stderr)
      return 127
    if code:
      print(f"error: exit code {code} from: {shlex.join(cmd)}", file=sys.stderr)
      return code
  return 0


def parser(prog: str = "python -m prompt_tuning.launch.tpu") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="subcommand", required=True)

  def add(name: str, help_text: str) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help_text)
    s.add_argument("--name", required=True, help="TPU VM / pod slice name.")
    s.add_argument("--zone", required=True, help="e.g. us-central2-b, europe-west4-a.")
    s.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's).")
    s.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="Print the commands instead of running them.")
    return s

  s = add("create", "Create a TPU VM or pod slice.")
  s.add_argument("--accelerator_type", "--accelerator-type", required=True, help="e.g. v3-8, v4-32, v5litepod-16.")
  s.add_argument("--version", "--runtime_version", default=DEFAULT_VERSION, help="TPU software (runtime) version.")
  s.add_argument("--spot", action="store_true", help="Spot (preemptible) capacity.")
  s = add("install", "Install the package (with jax[tpu]) on every worker.")
  s.add_argument("--source", default=None, help="A git checkout to install (default: this one, if any).")
  s.add_argument("--pip", default=None, help="Install this pip requirement instead, e.g. a git+https URL.")
  s.add_argument("--archive", default=None, help="Where to write the local source archive.")
  s = add("run", "Run a gin job on every worker; gin flags after `--`.")
  s.add_argument("--job", default="train", help="Job name: the log is ~/jobs/<job>.log on each worker.")
  s.add_argument("--module", default="prompt_tuning.train", help="CLI module: prompt_tuning.train|eval|infer.")
  s.add_argument("--env", action="append", default=[], help="NAME=VALUE exported for the job (repeatable).")
  s.add_argument("--foreground", action="store_true", help="Stream the output and return when the job ends.")
  s.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the CLI's --gin_file / --gin.X flags.")
  s = add("logs", "Stream a job's log.")
  s.add_argument("--job", default="train")
  s.add_argument("--worker", default="0", help="Worker index, or 'all'.")
  s.add_argument("--no_follow", action="store_true", help="Print the log and return.")
  s = add("stop", "Stop the CLIs on every worker (SIGTERM: save and exit).")
  s.add_argument("--force", action="store_true", help="SIGKILL and free the TPU from stuck processes.")
  add("delete", "Delete the TPU VM / pod slice.")
  return p


def commands_for(args: argparse.Namespace) -> list[list[str]]:
  where = dict(name=args.name, zone=args.zone, project=args.project)
  if args.subcommand == "create":
    return create_commands(accelerator_type=args.accelerator_type, version=args.version, spot=args.spot, **where)
  if args.subcommand == "install":
    if args.pip and args.source:
      raise ValueError("Give --pip or --source, not both.")
    return install_commands(source=args.source, pip=args.pip, archive=args.archive, **where)
  if args.subcommand == "run":
    return run_commands(job=args.job, cli_args=strip_dashes(args.cli_args), module=args.module, env=args.env,
                        foreground=args.foreground, **where)
  if args.subcommand == "logs":
    return logs_commands(job=args.job, worker=args.worker, follow=not args.no_follow, **where)
  if args.subcommand == "stop":
    return stop_commands(force=args.force, **where)
  return delete_commands(**where)


def main(argv: Sequence[str] | None = None, prog: str = "python -m prompt_tuning.launch.tpu") -> int:
  args = parser(prog).parse_args(argv)
  try:
    commands = commands_for(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return execute(commands, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
