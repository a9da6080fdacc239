"""The wheel carries the gin files (they live in gin_configs/ at the repository top, outside the package), the
sweep specs and the launchers: installed alone in a fresh virtual environment (no JAX, no TensorFlow), it prints
a sweep's Cloud TPU commands."""
from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

from run_once import once_per_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
BARE_ENV = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: nothing from the checkout or the test's environment


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel built from a copy of the checkout, so that the build leaves nothing in it (once per session)."""
  return pathlib.Path(once_per_run(tmp_path_factory, "wheel", lambda: str(_build_wheel(tmp_path_factory))))


def _build_wheel(tmp_path_factory) -> pathlib.Path:
  tmp_path = tmp_path_factory.mktemp("wheel")
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for folder in ("prompt_tuning", "gin_configs"):
    shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=600)
  built, = (tmp_path / "dist").glob("prompt_tuning-*.whl")
  return built


def test_wheel_ships_every_gin_file_where_the_cli_looks(wheel, tmp_path):
  shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".gin")}
  expected = {"prompt_tuning/gin_configs/" + str(p.relative_to(ROOT / "gin_configs"))
              for p in (ROOT / "gin_configs").rglob("*.gin")}
  assert expected and shipped == expected, sorted(expected ^ shipped)[:10]
  # gin_utils.default_search_paths() looks in <package>/gin_configs first: the installed layout.
  assert "prompt_tuning/gin_configs/runs/prompt_finetune.gin" in shipped
  specs = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".json")}
  assert specs == {str(p.relative_to(ROOT)) for p in (ROOT / "prompt_tuning" / "sweeps" / "specs").glob("*.json")}
  assert "prompt_tuning/sweeps/specs/paper_figure1.json" in specs
  # Installed from the wheel (no source tree next to it), the CLI's search path finds them.
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                 check=True, capture_output=True, timeout=600)
  code = ("from prompt_tuning import gin_utils; import os; "
          "print([p for p in gin_utils.default_search_paths() if os.path.isfile(os.path.join(p, 'runs', "
          "'prompt_finetune.gin'))])")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                        check=True, capture_output=True, text=True, timeout=300)
  assert proc.stdout.strip() == str([str(site / "prompt_tuning" / "gin_configs")]), proc.stdout


@pytest.fixture(scope="module")
def bare_venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh virtual environment holding the wheel alone (--no-deps): its python (once per session)."""
  return pathlib.Path(once_per_run(tmp_path_factory, "bare_venv", lambda: str(_bare_venv(wheel, tmp_path_factory))))


def _bare_venv(wheel: pathlib.Path, tmp_path_factory) -> pathlib.Path:
  venv = tmp_path_factory.mktemp("bare") / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                 timeout=300)
  python = venv / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                  str(wheel)], check=True, capture_output=True, timeout=600)
  return python


def _run(python: pathlib.Path, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  cwd.mkdir(exist_ok=True)
  return subprocess.run([str(python), "-I", *args], cwd=cwd, env=BARE_ENV, capture_output=True, text=True,
                        timeout=300)


def test_sweep_prints_cloud_tpu_commands_from_the_installed_wheel(bare_venv, tmp_path):
  python = bare_venv
  assert _run(python, tmp_path, "-c", "import jax").returncode != 0  # nothing but the wheel and the stdlib
  spec = {"output_dir": str(tmp_path / "runs"),
          "sizes": {"xl": {"gin_files": ["models/sizes/xl.gin"], "checkpoint": "gs://b/xl/checkpoint_9"}},
          "tasks": {"rte": {"name": "super_glue_rte", "module": "prompt_tuning.data.tasks", "metric": "accuracy"}},
          "methods": {"prompt_tuning": {"bindings": {"TRAIN_STEPS": 10}}},
          "tpu": {"zone": "us-central2-b", "project": "proj", "env": ["TFDS_DATA_DIR=gs://b/tfds"],
                  "tpus": {"xl": "pt-xl"}}}
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  proc = _run(python, tmp_path / "elsewhere", "-m", "prompt_tuning.sweeps", "run", str(tmp_path / "spec.json"),
              "--backend=tpu", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  (line,) = proc.stdout.splitlines()
  words = shlex.split(line)
  assert words[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pt-xl", "--zone=us-central2-b",
                       "--project=proj", "--worker=all"]
  remote = shlex.split(words[9][len("--command="):])
  assert "TFDS_DATA_DIR=gs://b/tfds" in remote
  start, end = remote.index("python3"), remote.index("--multiprocess")
  run_dir = f"{tmp_path}/runs/rte/xl/prompt_tuning-len100-from_class_labels/seed0"
  assert remote[start:start + 7] == ["python3", "-m", "prompt_tuning.train", "--gin_file=models/t5_1_1_prompt.gin",
                                     "--gin_file=models/sizes/xl.gin", "--gin_file=prompts/from_class_labels.gin",
                                     "--gin_file=runs/prompt_finetune.gin"]
  flags = remote[start + 7:end]
  for flag in (f"--gin.MODEL_DIR='{run_dir}'", "--gin.INITIAL_CHECKPOINT_PATH='gs://b/xl/checkpoint_9'",
               "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte'", "--gin.PROMPT_LENGTH=100", "--gin.TRAIN_STEPS=10"):
    assert flag in flags, flag
  assert remote[-3:] == ["|", "tee", "~/jobs/rte.xl.prompt_tuning-len100-from_class_labels.seed0.log"]
  # The shipped paper spec too (its gs:// output folder swapped for a local one: gs:// needs etils).
  (paper,) = python.parent.parent.glob("lib/python*/site-packages/prompt_tuning/sweeps/specs/paper_superglue.json")
  proc = _run(python, tmp_path / "elsewhere", "-m", "prompt_tuning.sweeps", "run", str(paper), "--backend=tpu",
              "--dry-run", f"--output_dir={tmp_path / 'paper'}")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout and all(l.startswith("gcloud compute tpus tpu-vm ssh ") for l in proc.stdout.splitlines())


def test_launchers_run_from_the_installed_wheel(bare_venv, tmp_path):
  proc = _run(bare_venv, tmp_path, "-m", "prompt_tuning.launch.gpu", "sbatch", "--nodes=2", "--dry-run", "--",
              "--gin.X=1")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert f"cd {tmp_path}" in lines and "#SBATCH --nodes=2" in lines  # no checkout: the job runs where it is sent
  assert "srun --kill-on-bad-exit=1 python -m prompt_tuning.launch.gpu run --module=prompt_tuning.train " \
         "--port=12345 -- --gin.X=1" in lines
  proc = _run(bare_venv, tmp_path, "-m", "prompt_tuning.launch.tpu", "install", "--name=pt", "--zone=z", "--dry-run")
  assert proc.returncode == 2 and "--source=CHECKOUT or --pip=REQUIREMENT" in proc.stderr
  proc = _run(bare_venv, tmp_path, "-m", "prompt_tuning.launch.local", "--num_processes=2", "--port=7", "--dry-run",
              "--", "python", "-m", "prompt_tuning.train")
  assert proc.returncode == 0 and proc.stdout.splitlines()[1].endswith("--process_count=2 --process_index=1")
