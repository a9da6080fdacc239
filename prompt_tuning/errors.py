"""What the CLIs report instead of a traceback, and the exit codes a scheduler reads.

Exit codes (every CLI and script, `errors.user_errors` in the scripts; `scripts.diff_checkpoints` has its own:
0 same, 1 different, 2 error):

  0   success
  1   internal failure: a crash (an uncaught exception, Python's own status), printed with its traceback
  2   user error: a bad flag, gin binding, path or file; one line on stderr naming the value and the fix
  3   the loss or the parameters became NaN/Inf; nothing non-finite was saved, the line names the newest finite
      checkpoint
  75  preempted (SIGTERM) and saved: run the same command again to resume (sysexits' EX_TEMPFAIL)

`--verbose` or `PT_TRACEBACK=1` prints the traceback of a user error too.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Iterator, NoReturn

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75
TRACEBACK_ENV = "PT_TRACEBACK"


class UserError(ValueError):
  """A bad value, path or file given by the user; the message names it and the fix."""

  exit_code = EXIT_USER_ERROR


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf (loss or parameters); the message names the newest finite checkpoint."""

  exit_code = EXIT_NONFINITE


def one_line(message: str) -> str:
  """`message` as a single `error: ...` line (whitespace, newlines included, collapsed)."""
  return "error: " + " ".join(str(message).split())


def traceback_wanted() -> bool:
  """Whether `PT_TRACEBACK=1` asks for the traceback of a user error too."""
  return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def exit_with(error: BaseException | str, code: int, show_traceback: bool | None = None) -> NoReturn:
  """One `error: ...` line on stderr (after the traceback when asked for), then exit `code`."""
  if traceback_wanted() if show_traceback is None else show_traceback:
    traceback.print_exc()
  print(one_line(error), file=sys.stderr, flush=True)
  sys.exit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
  """A script's body: a `UserError` or one of `kinds` (what its bad arguments raise) is one line and exit code 2,
  anything else a crash with its traceback (exit code 1)."""
  try:
    yield
  except (UserError, *kinds) as e:
    exit_with(e, EXIT_USER_ERROR)
