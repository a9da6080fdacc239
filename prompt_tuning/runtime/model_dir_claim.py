"""One trainer per MODEL_DIR: a claim file created atomically at start, refreshed while the run lives.

`MODEL_DIR/trainer.claim` (JSON) names its holder: host, pid, the process's start time, when the run started and
its last heartbeat. It is written with a TensorStore conditional write (the library under Orbax): "create only if
absent" is an exclusive file creation on a local disk and a GCS generation precondition on gs://, so of two
trainers starting together exactly one wins; a takeover and the release are conditional too (only if the claim
is still the one read, or still ours).

A claim is stale, and taken over with a warning, when its holder is gone:
* on this host, its pid no longer runs (or now runs another process: its start time differs);
* on another host, its heartbeat is older than `stale_after_s` (10 minutes by default; the holder rewrites it
  every `heartbeat_s`, 60 s by default). Hosts are told apart by name: two machines sharing a name (containers)
  are taken for one.
The claim is released (deleted, if still ours) when the run ends, fails or is preempted; `kill -9` leaves it
behind, and the next start on the same host takes it over at once. Only process 0 of a multi-host run claims.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Iterator

from etils import epath

from prompt_tuning.errors import UserError

CLAIM_FILE = "trainer.claim"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class ModelDirClaimedError(UserError):
  """Another live trainer holds MODEL_DIR."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a claim."""

  host: str
  pid: int
  pid_start: int | None  # the process's start time in clock ticks after boot (Linux), to tell reused pids apart
  started: float  # unix time the run claimed MODEL_DIR
  heartbeat: float  # unix time of the last refresh

  @classmethod
  def me(cls) -> Holder:
    now = time.time()
    return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), now, now)

  def describe(self) -> str:
    started = datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"pid {self.pid} on host {self.host} (started {started}, last heartbeat "
            f"{max(0, time.time() - self.heartbeat):.0f} s ago)")

  def encode(self) -> bytes:
    return json.dumps(dataclasses.asdict(self)).encode()

  @classmethod
  def decode(cls, data: bytes) -> Holder:
    fields = json.loads(data)
    return cls(str(fields["host"]), int(fields["pid"]), fields.get("pid_start"), float(fields["started"]),
               float(fields["heartbeat"]))


def _process_start(pid: int) -> int | None:
  """A process's start time (field 22 of /proc/<pid>/stat), or None where /proc is absent."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      stat = f.read()
  except OSError:
    return None
  return int(stat.rsplit(")", 1)[1].split()[19])  # after the command name, which may hold spaces


def _pid_runs(pid: int, pid_start: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it runs, as another user
    pass
  return pid_start is None or _process_start(pid) in (None, pid_start)


def stale_reason(holder: Holder, stale_after_s: float = STALE_AFTER_S) -> str | None:
  """Why `holder`'s claim may be taken over, or None while it looks alive."""
  if holder.host == socket.gethostname():
    if holder.pid == os.getpid() and holder.pid_start == _process_start(os.getpid()):
      return "it was left by this process"
    return None if _pid_runs(holder.pid, holder.pid_start) else f"pid {holder.pid} no longer runs on this host"
  age = time.time() - holder.heartbeat
  if age > stale_after_s:
    return f"its last heartbeat from host {holder.host} is {age:.0f} s old (over {stale_after_s:.0f} s)"
  return None


def _kvstore(model_dir: str):
  """A TensorStore key-value store on MODEL_DIR (local or gs://), or None for a file system it cannot reach."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top  # Orbax's dependency
  if str(model_dir).startswith("gs://"):
    bucket, _, path = str(model_dir)[len("gs://"):].partition("/")
    spec = {"driver": "gcs", "bucket": bucket, "path": path.rstrip("/") + "/" if path else ""}
  elif "://" in str(model_dir):
    return None
  else:
    spec = {"driver": "file", "path": os.path.abspath(os.path.expanduser(str(model_dir))) + "/"}
  return ts.KvStore.open(spec).result()


class ModelDirClaim:
  """Holds MODEL_DIR for this trainer: `acquire()` (or refuse), a heartbeat thread, `release()`."""

  def __init__(self, model_dir: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
    self.model_dir, self.heartbeat_s, self.stale_after_s = str(model_dir), heartbeat_s, stale_after_s
    self._store = None
    self._generation: bytes | None = None
    self._holder: Holder | None = None
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def path(self) -> str:
    return f"{self.model_dir.rstrip('/')}/{CLAIM_FILE}"

  def acquire(self) -> None:
    """Claim MODEL_DIR, taking over a stale claim with a warning; `ModelDirClaimedError` names a live holder."""
    try:
      epath.Path(self.model_dir).mkdir(parents=True, exist_ok=True)
      self._store = _kvstore(self.model_dir)
    except (OSError, ValueError) as e:
      raise UserError(f"MODEL_DIR={self.model_dir!r} cannot be used as a run folder ({e}); make it a writable "
                      "folder or choose another MODEL_DIR.") from e
    if self._store is None:
      logging.warning("MODEL_DIR=%s is on a file system the trainer claim cannot reach: nothing stops a second "
                      "trainer on it.", self.model_dir)
      return
    for _ in range(3):  # a lost race re-reads the winner's claim
      try:
        current = self._read()
      except ValueError as e:  # TensorStore's errors (permission, I/O) are ValueErrors
        raise UserError(f"Cannot read {self.path} ({e}); make MODEL_DIR={self.model_dir!r} a readable and "
                        "writable folder or choose another MODEL_DIR.") from e
      if current.state == "missing":
        reason = None
      else:
        holder, reason = self._holder_of(current.value)
        if reason is None:
          raise ModelDirClaimedError(
              f"MODEL_DIR={self.model_dir!r} is in use by another trainer: {holder.describe()}. Wait for it to "
              f"finish or stop it, or use another MODEL_DIR; if it is gone, delete {self.path}.")
      mine = Holder.me()
      try:
        written = self._write(mine.encode(), current.stamp.generation)
      except ValueError as e:
        raise UserError(f"Cannot write {self.path} ({e}); make MODEL_DIR={self.model_dir!r} a writable folder or "
                        "choose another MODEL_DIR.") from e
      if written:
        if reason is not None:
          logging.warning("Took over the stale trainer claim on %s: %s.", self.model_dir, reason)
        self._holder, self._generation = mine, written
        self._start_heartbeat()
        return
    raise ModelDirClaimedError(f"MODEL_DIR={self.model_dir!r}: another trainer claimed it at the same moment; "
                               "use another MODEL_DIR or start one trainer.")

  def _holder_of(self, value: bytes) -> tuple[Holder | None, str | None]:
    try:
      holder = Holder.decode(value)
    except (ValueError, KeyError, TypeError) as e:
      return None, f"the claim file is unreadable ({e})"
    return holder, stale_reason(holder, self.stale_after_s)

  def _read(self):
    return self._store.read(CLAIM_FILE).result()

  def _write(self, value: bytes | None, if_generation: bytes) -> bytes | None:
    """Write (or delete) the claim if its generation is still `if_generation`; the new generation (a deletion's is
    "no value") on success, None when the claim changed meanwhile."""
    try:
      written = self._store.write(CLAIM_FILE, value, if_equal=if_generation).result().generation
    except ValueError as e:
      if "StorageGeneration" not in str(e):
        raise
      # A generation the store cannot compare (GCS emulators report none): write, then read back.
      written = self._store.write(CLAIM_FILE, value).result().generation
      if value is not None and self._read().value != value:
        return None
    return written or None

  def _start_heartbeat(self) -> None:
    if self.heartbeat_s <= 0:
      return
    self._thread = threading.Thread(target=self._beat, name="model-dir-claim", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      self.heartbeat()

  def heartbeat(self) -> bool:
    """Refresh the claim's heartbeat; False (with an error logged) once someone else holds it."""
    with self._lock:
      if self._generation is None:
        return False
      self._holder = dataclasses.replace(self._holder, heartbeat=time.time())
      try:
        written = self._write(self._holder.encode(), self._generation)
      except Exception as e:  # pylint: disable=broad-except  # a storage hiccup: try again at the next beat
        logging.warning("Could not refresh the trainer claim %s: %s", self.path, e)
        return True
      if not written:
        logging.error("The trainer claim %s was taken over by another process; this run no longer holds "
                      "MODEL_DIR.", self.path)
        self._generation = None
        return False
      self._generation = written
      return True

  def release(self) -> None:
    """Stop the heartbeat and delete the claim if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with self._lock:
      if self._generation is None:
        return
      try:
        if not self._write(None, self._generation):
          logging.warning("Left the trainer claim %s in place: another process holds it now.", self.path)
      except Exception as e:  # pylint: disable=broad-except  # the run's outcome matters more than the claim
        logging.warning("Could not release the trainer claim %s: %s", self.path, e)
      self._generation = None


@contextlib.contextmanager
def claimed(model_dir: str, process_index: int = 0, **kwargs) -> Iterator[ModelDirClaim | None]:
  """MODEL_DIR claimed for the duration (by process 0 only; other processes yield None)."""
  if process_index != 0:
    yield None
    return
  claim = ModelDirClaim(model_dir, **kwargs)
  claim.acquire()
  try:
    yield claim
  finally:
    claim.release()
