"""Safe resumption: a damaged latest checkpoint, left-over temporary folders, one trainer per MODEL_DIR, the soak."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

from cli_utils import run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.errors import UserError
from prompt_tuning.runtime import model_dir_claim
from prompt_tuning.runtime.checkpoints import orbax_io
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer, UnreadableCheckpointsError
from prompt_tuning.runtime.model_dir_claim import CLAIM_FILE, Holder, ModelDirClaim, ModelDirClaimedError
from prompt_tuning.scripts import soak
from test_train_cli import PROMPT_FILE, train_flags


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture
def live_pid():
  """A process that runs for the test's duration (another trainer's pid)."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def write_claim(model_dir: pathlib.Path, host: str, pid: int, heartbeat_age_s: float = 0.0) -> None:
  model_dir.mkdir(parents=True, exist_ok=True)
  now = time.time()
  (model_dir / CLAIM_FILE).write_bytes(Holder(host, pid, None, now - 3600, now - heartbeat_age_s).encode())


def damage(checkpoint: pathlib.Path) -> dict[str, bytes]:
  """Truncate every file of a checkpoint's `state` item to half; returns the damaged bytes by relative path."""
  damaged = {}
  for path in sorted((checkpoint / "state").rglob("*")):
    if path.is_file():
      data = path.read_bytes()[: path.stat().st_size // 2]
      path.write_bytes(data)
      damaged[str(path.relative_to(checkpoint))] = data
  assert damaged
  return damaged


def test_damaged_latest_checkpoint_resumes_from_the_newest_intact_one(tmp_path, frozen_checkpoint):
  model_dir = tmp_path / "run"
  flags = lambda steps: train_flags(model_dir, frozen_checkpoint, steps, "--gin.EVAL_PERIOD=0",
                                    "--gin.KEEP_CHECKPOINTS=3")
  run_cli("train", flags(7), tmp_path)  # saves 3 (start), 5, 7
  prompt_7 = np.load(model_dir / PROMPT_FILE.format(step=7))
  damaged = damage(model_dir / "checkpoint_7")
  # What a killed run leaves: Orbax's and the export's temporary folders, and its claim (its pid is gone).
  (model_dir / "checkpoint_9.orbax-checkpoint-tmp-1765000000" / "state").mkdir(parents=True)
  (model_dir / "numpy_checkpoints" / "checkpoint_9.tmp-1765000000").mkdir()
  (model_dir / "notes.tmp-1").mkdir()  # not ours: kept
  write_claim(model_dir, socket.gethostname(), dead_pid())

  proc = run_cli("train", flags(9), tmp_path)
  log = proc.stderr
  assert "checkpoint_7 in" in log and "is unreadable:" in log, log[-3000:]
  assert f"Resuming from {model_dir}/checkpoint_5" in log, log[-3000:]
  assert "Took over the stale trainer claim" in log and "no longer runs on this host" in log
  aside = [p for p in model_dir.iterdir() if p.name.startswith("checkpoint_7.unreadable-")]
  assert len(aside) == 1, sorted(p.name for p in model_dir.iterdir())
  assert {name: (aside[0] / name).read_bytes() for name in damaged} == damaged  # kept exactly as found
  # Resumed from step 5 with the input position saved there: step 7 comes out bit-identical again.
  np.testing.assert_array_equal(np.load(model_dir / PROMPT_FILE.format(step=7)), prompt_7)
  assert sorted(p.name for p in model_dir.glob("checkpoint_?")) == ["checkpoint_5", "checkpoint_7", "checkpoint_9"]
  assert not (model_dir / "checkpoint_9.orbax-checkpoint-tmp-1765000000").exists()
  assert not (model_dir / "numpy_checkpoints" / "checkpoint_9.tmp-1765000000").exists()
  assert (model_dir / "notes.tmp-1").is_dir()
  assert not (model_dir / CLAIM_FILE).exists()  # released at the end


def test_no_readable_checkpoint_is_an_error_that_moves_nothing(tmp_path):
  ckpt = RunCheckpointer(str(tmp_path / "run"), keep=None)
  target = {"prompt": np.arange(6, dtype=np.float32).reshape(3, 2)}
  for step in (1, 2):
    ckpt.save(step, target, {"count": np.int32(step)}, data_position=step)
  ckpt.wait()
  abstract = lambda tree: {k: np.zeros_like(v) for k, v in tree.items()}
  # An intact older one: restored, the damaged newer one moved aside.
  damage(tmp_path / "run" / "checkpoint_2")
  restored = ckpt.restore_latest(abstract(target), {"count": np.int32(0)})
  assert restored[2:] == (1, 1)
  np.testing.assert_array_equal(restored[0]["prompt"], target["prompt"])
  assert ckpt.latest_step() == 1 and len(list((tmp_path / "run").glob("checkpoint_2.unreadable-*"))) == 1
  # None intact: one error naming each, and every folder stays where it was.
  damage(tmp_path / "run" / "checkpoint_1")
  before = sorted(p.name for p in (tmp_path / "run").iterdir())
  with pytest.raises(UnreadableCheckpointsError, match=r"checkpoint_1: .*move those folders out of MODEL_DIR"):
    ckpt.restore_latest(abstract(target), {"count": np.int32(0)})
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_second_trainer_on_a_claimed_model_dir_is_refused_at_once(tmp_path, frozen_checkpoint, live_pid):
  model_dir = tmp_path / "run"
  write_claim(model_dir, socket.gethostname(), live_pid)
  start = time.time()
  proc = run_cli("train", train_flags(model_dir, frozen_checkpoint, 5), tmp_path, check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: MODEL_DIR=") and f"pid {live_pid} on host {socket.gethostname()}" in last, \
      proc.stderr[-3000:]
  assert time.time() - start < 30
  assert sorted(p.name for p in model_dir.iterdir()) == [CLAIM_FILE]  # nothing written, the claim untouched
  assert Holder.decode((model_dir / CLAIM_FILE).read_bytes()).pid == live_pid


def test_claim_staleness_heartbeat_and_release(tmp_path, live_pid):
  folder = tmp_path / "run"
  # Another host with a fresh heartbeat holds it; with an old heartbeat its claim is taken over.
  write_claim(folder, "other-host", 123, heartbeat_age_s=5)
  with pytest.raises(ModelDirClaimedError, match="pid 123 on host other-host"):
    ModelDirClaim(str(folder), heartbeat_s=0).acquire()
  write_claim(folder, "other-host", 123, heartbeat_age_s=700)
  claim = ModelDirClaim(str(folder), heartbeat_s=0)
  claim.acquire()
  mine = Holder.decode((folder / CLAIM_FILE).read_bytes())
  assert (mine.host, mine.pid) == (socket.gethostname(), os.getpid())
  # The heartbeat moves forward; once someone else has written the claim, this run neither beats nor deletes it.
  time.sleep(0.01)
  assert claim.heartbeat() and Holder.decode((folder / CLAIM_FILE).read_bytes()).heartbeat > mine.heartbeat
  write_claim(folder, socket.gethostname(), live_pid)
  assert not claim.heartbeat()
  claim.release()
  assert Holder.decode((folder / CLAIM_FILE).read_bytes()).pid == live_pid
  # An unreadable claim file is taken over; the context manager releases at exit, and only process 0 claims.
  (folder / CLAIM_FILE).write_text("{truncated")
  with model_dir_claim.claimed(str(folder), heartbeat_s=0) as held:
    assert held is not None and json.loads((folder / CLAIM_FILE).read_text())["pid"] == os.getpid()
  assert not (folder / CLAIM_FILE).exists()
  with model_dir_claim.claimed(str(folder), process_index=1) as held:
    assert held is None and not (folder / CLAIM_FILE).exists()


class _NoGenerations:
  """A store that reports generations it cannot compare, as the GCS emulator does (it sends none)."""

  def __init__(self, store):
    self.store = store

  def read(self, key):
    return self.store.read(key)

  def write(self, key, value, if_equal=None):
    if if_equal is not None:
      raise ValueError("Malformed StorageGeneration")
    return self.store.write(key, value)


def test_claim_without_usable_generations_writes_then_reads_back(tmp_path, live_pid, monkeypatch):
  folder = tmp_path / "run"
  real = model_dir_claim._kvstore  # pylint: disable=protected-access
  monkeypatch.setattr(model_dir_claim, "_kvstore", lambda model_dir: _NoGenerations(real(model_dir)))
  write_claim(folder, socket.gethostname(), live_pid)
  with pytest.raises(ModelDirClaimedError, match=f"pid {live_pid}"):
    ModelDirClaim(str(folder), heartbeat_s=0).acquire()
  write_claim(folder, socket.gethostname(), dead_pid())
  with model_dir_claim.claimed(str(folder), heartbeat_s=0) as claim:
    assert Holder.decode((folder / CLAIM_FILE).read_bytes()).pid == os.getpid() and claim.heartbeat()
  assert not (folder / CLAIM_FILE).exists()


def test_short_soak_keeps_the_last_checkpoints_every_export_and_flat_memory(tmp_path):
  model_dir = tmp_path / "soak"
  proc = run_cli("scripts.soak", [f"--model_dir={model_dir}", "--steps=6", "--save_period=2", "--keep=3",
                                  "--eval_period=6", "--eval_steps=1", "--rss_from_step=2", "--max_rss_growth=1.0",
                                  f"--result={tmp_path / 'soak.json'}"], tmp_path)
  result = json.loads((tmp_path / "soak.json").read_text())
  assert result["passed"] and result["failures"] == [], proc.stdout
  assert result["rss"]["samples"] == 3 and result["rss"]["base_step"] == 2 and result["rss"]["base_mib"] > 0
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_2", "checkpoint_4", "checkpoint_6"]
  assert sorted(p.name for p in (model_dir / "numpy_checkpoints").iterdir()) == [
      f"checkpoint_{s}" for s in (0, 2, 4, 6)]
  # The checks do fail: a missing export, an extra checkpoint and a missing evaluation are reported.
  (model_dir / "numpy_checkpoints" / "checkpoint_2" / soak.EXPORT).unlink()
  (model_dir / "checkpoint_0").mkdir()
  failures = soak.check_run(soak.epath.Path(model_dir), 6, 2, 3, 3)
  assert any("export of step 2 missing" in f for f in failures) and any("checkpoints kept" in f for f in failures)
  assert any("evaluations at steps [6], expected [3, 6]" in f for f in failures), failures
  # A non-empty folder is refused: a soak starts from nothing.
  again = run_cli("scripts.soak", [f"--model_dir={model_dir}"], tmp_path, check=False)
  assert again.returncode == 2 and "is not empty" in again.stderr


def test_claim_on_a_model_dir_that_cannot_hold_it_is_a_user_error(tmp_path):
  (tmp_path / "a_file").write_text("not a folder")
  for model_dir in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
    with pytest.raises(UserError, match=f"MODEL_DIR='{model_dir}' cannot be used as a run folder"):
      ModelDirClaim(str(model_dir), heartbeat_s=0).acquire()
  locked = tmp_path / "immutable"
  locked.mkdir()
  if subprocess.run(["chattr", "+i", str(locked)], capture_output=True, check=False).returncode != 0:
    return  # no immutable folders here (not root, or a file system without them): the cases above suffice
  try:
    with pytest.raises(UserError, match=f"Cannot write {locked}/{CLAIM_FILE}.*make MODEL_DIR="):
      ModelDirClaim(str(locked), heartbeat_s=0).acquire()
  finally:
    subprocess.run(["chattr", "-i", str(locked)], check=False)


@pytest.fixture
def fake_gcs(tmp_path_factory):
  """The local GCS emulator of tests/gcs_emulator.py, every library pointed at it for the test."""
  gcs_emulator = pytest.importorskip("gcs_emulator", reason="tests/gcs_emulator.py (the GCS emulator) is absent")
  if why := gcs_emulator.missing_requirements():
    pytest.skip(why)
  fake = gcs_emulator.start(tmp_path_factory.mktemp("gcs"))
  try:
    with gcs_emulator.environment(fake.env):
      yield fake
  finally:
    fake.stop()


def test_claim_set_aside_and_clean_up_on_gcs(fake_gcs, tmp_path, live_pid, caplog):
  run = fake_gcs.create_bucket("resume-safety") + "/run"
  with model_dir_claim.claimed(run, heartbeat_s=0) as claim:
    assert "run/trainer.claim" in fake_gcs.objects("resume-safety") and claim.heartbeat()
  assert "run/trainer.claim" not in fake_gcs.objects("resume-safety")
  holder = tmp_path / "claim"
  holder.write_bytes(Holder(socket.gethostname(), live_pid, None, time.time(), time.time()).encode())
  fake_gcs.upload(holder, f"{run}/{CLAIM_FILE}")
  with pytest.raises(ModelDirClaimedError, match=f"pid {live_pid}"):
    ModelDirClaim(run, heartbeat_s=0).acquire()
  gone = dead_pid()  # a stale claim (its holder is gone) is taken over with a warning, on gs:// too
  holder.write_bytes(Holder(socket.gethostname(), gone, None, time.time(), time.time()).encode())
  fake_gcs.upload(holder, f"{run}/{CLAIM_FILE}")
  with caplog.at_level(logging.WARNING), model_dir_claim.claimed(run, heartbeat_s=0):
    assert Holder.decode(epath.Path(f"{run}/{CLAIM_FILE}").read_bytes()).pid == os.getpid()
  assert f"Took over the stale trainer claim on {run}" in caplog.text and f"pid {gone}" in caplog.text, caplog.text
  assert "run/trainer.claim" not in fake_gcs.objects("resume-safety")

  ckpt = RunCheckpointer(run, keep=None)
  target = {"prompt": np.arange(6, dtype=np.float32).reshape(3, 2)}
  for step in (1, 2):
    ckpt.save(step, target, {"count": np.int32(step)}, data_position=step)
  ckpt.wait()
  broken = tmp_path / "broken"
  broken.write_bytes(b"{")
  for name in fake_gcs.objects("resume-safety", "run/checkpoint_2/state/"):
    if not name.endswith("/"):
      fake_gcs.upload(broken, f"gs://resume-safety/{name}")
  fake_gcs.upload(broken, f"{run}/checkpoint_3/state/x")  # a save that never wrote commit_success.txt
  assert orbax_io.remove_unfinished_saves(run) == [f"{run}/checkpoint_3"]
  restored = RunCheckpointer(run, keep=None).restore_latest({"prompt": np.zeros((3, 2), np.float32)},
                                                           {"count": np.int32(0)})
  assert restored[2] == 1
  folders = {name.split("/")[1] for name in fake_gcs.objects("resume-safety", "run/")}
  assert "checkpoint_1" in folders and "checkpoint_2" not in folders and "checkpoint_3" not in folders
  assert any(f.startswith("checkpoint_2.unreadable-") for f in folders), folders
