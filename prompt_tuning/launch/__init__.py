"""Launchers: `local` (several jax.distributed processes on this machine), `tpu` (Cloud TPU VMs and pod slices
through gcloud) and `gpu` (multi-node GPU through jax.distributed and SLURM).

Run as `python -m prompt_tuning.launch.<name>` from an installed package, or as `python -m launch.<name>` from
a checkout (the top-level `launch/` entry points call these modules). Standard library only, so that printing
commands (`--dry-run`) needs neither JAX nor TensorFlow.
"""
from __future__ import annotations

import pathlib
from typing import Sequence


def source_checkout() -> pathlib.Path | None:
  """The source checkout this package runs from (it holds setup.py and launch/); None when installed."""
  root = pathlib.Path(__file__).resolve().parents[2]
  return root if (root / "setup.py").is_file() and (root / "launch").is_dir() else None


def strip_dashes(args: Sequence[str]) -> list[str]:
  """The arguments after a leading `--` (argparse.REMAINDER keeps it)."""
  return list(args[1:] if args[:1] == ["--"] else args)


def distributed_flags(coordinator_address: str, num_processes: int, process_id: int) -> list[str]:
  """The CLI flags that make a process join `jax.distributed` (see `prompt_tuning.cli.initialize_distributed`)."""
  return ["--multiprocess", f"--coordinator_address={coordinator_address}", f"--process_count={num_processes}",
          f"--process_index={process_id}"]
