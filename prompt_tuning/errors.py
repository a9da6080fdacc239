"""What the CLIs report instead of a traceback, and the exit codes a scheduler reads.

Exit codes (every CLI; `scripts.diff_checkpoints` has its own: 0 same, 1 different, 2 error):

  0   success
  1   internal failure: a crash (an uncaught exception, Python's own status), printed with its traceback
  2   user error: a bad flag, gin binding, path or file; one line on stderr naming the value and the fix
  3   the loss or the parameters became NaN/Inf; nothing non-finite was saved, the line names the newest finite
      checkpoint
  75  preempted (SIGTERM) and saved: run the same command again to resume (sysexits' EX_TEMPFAIL)

`--verbose` or `PT_TRACEBACK=1` prints the traceback of a user error too.
"""
from __future__ import annotations

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
