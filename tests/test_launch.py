"""The launchers: local multi-process, Cloud TPU (gcloud commands, checked as printed by --dry-run and as run
against a stand-in gcloud) and multi-node GPU (jax.distributed from flags / environment / SLURM, sbatch)."""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from prompt_tuning.launch import gpu, local, tpu

GIN = ["--gin_file=models/t5_1_1_xl_prompt.gin", "--gin_file=runs/prompt_finetune.gin",
       "--gin.MODEL_DIR='gs://bucket/runs/rte'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}"]
WHERE = ["--name=pt-v4", "--zone=us-central2-b"]


@pytest.fixture(autouse=True)
def no_real_gcloud(tmp_path_factory, monkeypatch):
  """Every test sees a stand-in `gcloud` that fails, so a real one on this machine can never run."""
  bin_dir = tmp_path_factory.mktemp("guard")
  _stand_in(bin_dir, "gcloud", bin_dir / "calls.jsonl", code=99)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def with_dry_run(argv: tuple[str, ...] | list[str]) -> list[str]:
  """`--dry-run` before the `--` that starts the passed-through gin flags."""
  argv = list(argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  return [*argv[:cut], "--dry-run", *argv[cut:]]


def dry_run(capsys, *argv: str) -> list[list[str]]:
  assert tpu.main(with_dry_run(argv)) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def remote(command: list[str]) -> str:
  """The shell line an ssh command runs on the workers (checks the ssh part on the way)."""
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pt-v4"]
  assert "--zone=us-central2-b" in command
  (flag,) = [a for a in command if a.startswith("--command=")]
  return flag[len("--command="):]


# ------------------------------------------------------------------------------------------------------ tpu
def test_tpu_create_pod_slice(capsys):
  cmds = dry_run(capsys, "create", *WHERE, "--accelerator_type=v4-32", "--spot", "--project=my-proj")
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "pt-v4", "--zone=us-central2-b",
                   "--project=my-proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]]
  cmds = dry_run(capsys, "create", *WHERE, "--accelerator_type=v3-8", "--version=tpu-vm-base")
  assert cmds[0][-2:] == ["--accelerator-type=v3-8", "--version=tpu-vm-base"]  # no --spot, no --project


def test_tpu_install_this_checkout_on_every_worker(capsys):
  archive, scp, ssh = dry_run(capsys, "install", *WHERE, "--archive=/tmp/pt.tgz")
  assert archive == ["git", "-C", str(tpu.REPO_ROOT), "archive", "--format=tar.gz", "--output=/tmp/pt.tgz", "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/pt.tgz", "pt-v4:prompt_tuning.tar.gz",
                 "--zone=us-central2-b", "--worker=all"]
  assert "--worker=all" in ssh
  line = remote(ssh)
  assert "tar xzf prompt_tuning.tar.gz -C prompt_tuning" in line
  assert line.endswith("python3 -m pip install -U -e './prompt_tuning[tpu]'")


def test_tpu_install_pip_requirement(capsys):
  (ssh,) = dry_run(capsys, "install", *WHERE, "--pip=git+https://github.com/x/prompt_tuning@v1#egg=pt[tpu]")
  assert remote(ssh) == "python3 -m pip install -U 'git+https://github.com/x/prompt_tuning@v1#egg=pt[tpu]'"


@pytest.mark.parametrize("foreground", [False, True])
def test_tpu_run_passes_gin_flags_through_to_every_worker(capsys, foreground):
  (ssh,) = dry_run(capsys, "run", *WHERE, "--job=rte-xl", "--env=TFDS_DATA_DIR=gs://bucket/tfds",
                   *(["--foreground"] if foreground else []), "--", *GIN)
  assert "--worker=all" in ssh
  words = shlex.split(remote(ssh))
  start = words.index("python3")
  assert words[start:start + 3 + len(GIN) + 1] == ["python3", "-m", "prompt_tuning.train", *GIN, "--multiprocess"]
  assert "TFDS_DATA_DIR=gs://bucket/tfds" in words
  if foreground:
    assert words[-3:] == ["|", "tee", "~/jobs/rte-xl.log"]
  else:
    assert words[start - 2:start] == ["setsid", "nohup"] and words[-6:] == [">", "~/jobs/rte-xl.log", "2>&1", "<",
                                                                            "/dev/null", "&"]


def test_tpu_logs_stop_delete(capsys):
  (logs,) = dry_run(capsys, "logs", *WHERE, "--job=rte-xl")
  assert "--worker=0" in logs and remote(logs) == "tail -n +1 -F ~/jobs/rte-xl.log"
  (stop,) = dry_run(capsys, "stop", *WHERE)
  assert "--worker=all" in stop and remote(stop).startswith("pkill -TERM -f '[p]rompt_tuning\\.(train|eval|infer)'")
  (kill,) = dry_run(capsys, "stop", *WHERE, "--force")
  assert "pkill -KILL" in remote(kill) and "/dev/accel*" in remote(kill) and "libtpu_lockfile" in remote(kill)
  assert dry_run(capsys, "delete", *WHERE) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "pt-v4",
                                                "--zone=us-central2-b", "--quiet"]]


def test_tpu_stop_pattern_matches_the_cli_but_not_its_own_shell():
  pattern = tpu.CLI_PATTERN
  own_shell = remote(tpu.stop_commands("pt-v4", "us-central2-b")[0])
  assert subprocess.run(["grep", "-qE", pattern], input="python3 -m prompt_tuning.train --gin_file=x", text=True
                        ).returncode == 0
  assert subprocess.run(["grep", "-qE", pattern], input=own_shell, text=True).returncode == 1


@pytest.mark.parametrize("argv,message", [
    (["run", *WHERE], "No gin flags"),
    (["run", *WHERE, "--job=a b", "--", "--gin.X=1"], "--job='a b'"),
    (["run", *WHERE, "--env=NOVALUE", "--", "--gin.X=1"], "NAME=VALUE"),
    (["install", *WHERE, "--pip=x", "--source=/y"], "not both"),
])
def test_tpu_bad_arguments_are_named(capsys, argv, message):
  assert tpu.main(with_dry_run(argv)) == 2
  assert message in capsys.readouterr().err


def _stand_in(bin_dir: pathlib.Path, name: str, record: pathlib.Path, code: int = 0) -> None:
  script = bin_dir / name
  script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\nsys.exit({code})\n")
  script.chmod(0o755)


def test_tpu_runs_exactly_the_dry_run_commands(tmp_path, monkeypatch, capsys):
  record = tmp_path / "calls.jsonl"
  _stand_in(tmp_path, "gcloud", record)
  _stand_in(tmp_path, "git", record)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  argv = ["install", *WHERE, f"--archive={tmp_path / 'a.tgz'}"]
  expected = dry_run(capsys, *argv)
  assert tpu.main(argv) == 0
  calls = [json.loads(l) for l in record.read_text().splitlines()]
  assert [[pathlib.Path(c[0]).name, *c[1:]] for c in calls] == expected


def test_tpu_stops_at_the_first_failing_command(tmp_path, monkeypatch, capsys):
  record = tmp_path / "calls.jsonl"
  _stand_in(tmp_path, "git", record, code=5)
  _stand_in(tmp_path, "gcloud", record)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  assert tpu.main(["install", *WHERE, f"--archive={tmp_path / 'a.tgz'}"]) == 5
  assert [pathlib.Path(json.loads(l)[0]).name for l in record.read_text().splitlines()] == ["git"]
  assert "exit code 5" in capsys.readouterr().err


def test_tpu_without_gcloud_says_so(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path))
  assert tpu.main(["delete", *WHERE]) == 127
  assert "install the Google Cloud CLI" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ gpu
SLURM = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "gpu[007,001-003],cpu1",
         "SLURM_JOB_NODELIST": "other[1-9]"}


@pytest.mark.parametrize("nodelist,host", [
    ("node001", "node001"), ("node001,node002", "node001"), ("node[001-015],host2", "node001"),
    ("gpu[007,001-003]", "gpu007"), ("gpu[3-4]-ib,x", "gpu3-ib"), ("a-b.c", "a-b.c")])
def test_first_host_of_slurm_node_list(nodelist, host):
  assert gpu.first_host(nodelist) == host


def test_distributed_from_slurm_environment_flags_win():
  assert gpu.resolve(env=SLURM, port=4000) == gpu.Distributed("gpu007:4000", 4, 2)
  job_only = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
  assert gpu.resolve(env=job_only).coordinator_address == f"other1:{gpu.DEFAULT_PORT}"
  jax_env = {**SLURM, "JAX_COORDINATOR_ADDRESS": "10.0.0.1:99", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "5"}
  assert gpu.resolve(env=jax_env) == gpu.Distributed("10.0.0.1:99", 8, 5)
  assert gpu.resolve("h:1", 2, 0, env=jax_env) == gpu.Distributed("h:1", 2, 0)


def test_distributed_errors_name_what_is_missing():
  with pytest.raises(ValueError, match="process count .* SLURM_NTASKS"):
    gpu.resolve(env={"SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"})
  with pytest.raises(ValueError, match="Process index 4 is outside"):
    gpu.resolve("h:1", 4, 4, env={})
  with pytest.raises(ValueError, match="SLURM_NTASKS='x'"):
    gpu.resolve(env={**SLURM, "SLURM_NTASKS": "x"})


def test_gpu_run_execs_the_cli_with_distributed_flags(tmp_path):
  (tmp_path / "echo_args.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  env = {**os.environ, **SLURM, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(gpu.REPO_ROOT)])}
  out = subprocess.run([sys.executable, "-m", "launch.gpu", "run", "--module=echo_args", "--port=4000", "--", *GIN],
                       env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
  assert json.loads(out) == [*GIN, "--multiprocess", "--coordinator_address=gpu007:4000", "--process_count=4",
                             "--process_index=2"]


def test_sbatch_script_renders_valid_bash(tmp_path, capsys):
  assert gpu.main(["sbatch", "--nodes=4", "--gpus_per_node=8", "--job_name=rte", "--partition=a100",
                   "--time=02:00:00", "--setup=source .venv/bin/activate", "--dry-run", "--", *GIN]) == 0
  out = capsys.readouterr().out
  for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
               "#SBATCH --partition=a100", "#SBATCH --time=02:00:00", "#SBATCH --job-name=rte",
               "source .venv/bin/activate", "# then: sbatch rte.sbatch"):
    assert line in out.splitlines(), line
  assert "--account" not in out
  (srun,) = [l for l in out.splitlines() if l.startswith("srun ")]
  words = shlex.split(srun)
  assert words[:5] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "prompt_tuning.launch.gpu"]
  assert words[words.index("--") + 1:] == GIN
  script = tmp_path / "rte.sbatch"
  script.write_text(out)
  assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_sbatch_rejects_zero_nodes(capsys):
  assert gpu.main(["sbatch", "--nodes=0", "--dry-run", "--", *GIN]) == 2
  assert "nodes=0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- local
def test_local_process_commands_name_coordinator_count_and_index():
  cmds = local.process_commands(["python", "-m", "prompt_tuning.train", "--gin.X=1"], 3, 1234)
  assert [c[-4:] for c in cmds] == [local.distributed_flags("localhost:1234", 3, i) for i in range(3)]
  assert cmds[2][-1] == "--process_index=2" and cmds[0][:4] == ["python", "-m", "prompt_tuning.train", "--gin.X=1"]
  with pytest.raises(ValueError, match="num_processes=0"):
    local.process_commands(["python"], 0, 1234)


def test_local_failing_process_stops_the_others(tmp_path):
  # Process 1 exits at once; process 0 would otherwise wait (like a peer blocked in a collective).
  script = "import sys, time; sys.exit(3) if sys.argv[-1] == '--process_index=1' else time.sleep(600)"
  codes = local.launch([sys.executable, "-c", script], 2, log_dir=tmp_path, timeout=60)
  assert codes[1] == 3 and codes[0] != 0


def test_local_simulated_devices_per_process():
  env = local.process_env({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, "cpu", 4)
  assert env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"
  assert "XLA_FLAGS" not in local.process_env({}, "cpu", 1)
