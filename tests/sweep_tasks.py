"""A SeqIO mixture of the CLI test task, for the sweeps' multi-task runs (the CLIs import it through
MIXTURE_OR_TASK_MODULE)."""
from __future__ import annotations

import seqio

import cli_tasks  # pylint: disable=unused-import  (registers cli_test_task)

MIXTURE = "cli_test_mixture"

seqio.MixtureRegistry.remove(MIXTURE)
seqio.MixtureRegistry.add(MIXTURE, [("cli_test_task", 1.0)])
