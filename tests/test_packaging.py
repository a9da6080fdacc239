"""The wheel carries the gin files (they live in gin_configs/ at the repository top, outside the package) and
the sweep specs."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_ships_every_gin_file_where_the_cli_looks(tmp_path):
  src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
  src.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for folder in ("prompt_tuning", "gin_configs"):
    shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=600)
  wheel, = (tmp_path / "dist").glob("prompt_tuning-*.whl")
  shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".gin")}
  expected = {"prompt_tuning/gin_configs/" + str(p.relative_to(ROOT / "gin_configs"))
              for p in (ROOT / "gin_configs").rglob("*.gin")}
  assert expected and shipped == expected, sorted(expected ^ shipped)[:10]
  # gin_utils.default_search_paths() looks in <package>/gin_configs first: the installed layout.
  assert "prompt_tuning/gin_configs/runs/prompt_finetune.gin" in shipped
  specs = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".json")}
  assert specs == {"prompt_tuning/sweeps/specs/micro.json", "prompt_tuning/sweeps/specs/paper_superglue.json"}
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
