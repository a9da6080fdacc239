"""The one base class of the mistakes a user can fix: the CLIs print them as one line, without a traceback."""
from __future__ import annotations


class UserError(ValueError):
  """A bad value, path or file given by the user; the message names it and the fix."""
