"""Importing this module registers every task and mixture of the package.

See `docs/data.md` for the names, formats and metrics. Registration is cheap
(no data is read) and idempotent.
"""
# pylint: disable=unused-import
from prompt_tuning.data import c4
from prompt_tuning.data import glue
from prompt_tuning.data import glue_transfer
from prompt_tuning.data import multilingual
from prompt_tuning.data import qa
from prompt_tuning.data import spot
from prompt_tuning.data import super_glue
