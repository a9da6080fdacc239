"""The reference repository's gin file paths and T5X's multi-size files resolve to ours (as a user types them)."""
from __future__ import annotations

import gin
import pytest

from prompt_tuning import gin_files, gin_utils
from prompt_tuning.models import config as t5_config


@pytest.mark.parametrize("name, want", [
    ("prompt_tuning/configs/models/t5_1_1_base_prompt.gin", "models/t5_1_1_base_prompt.gin"),
    ("prompt_tuning/configs/models/decoding/beam_search.gin", "decoding/beam_search.gin"),
    ("models/decoding/nucleus_sampling.gin", "decoding/nucleus_sampling.gin"),
    ("prompt_tuning/configs/prompts/from_class_labels.gin", "prompts/from_class_labels.gin"),
    ("runs/prompt_finetune.gin", "runs/prompt_finetune.gin"),
])
def test_reference_paths_map_to_ours(name, want):
  assert gin_files.resolve_reference_path(name) == want


@pytest.mark.parametrize("size, layers, emb_dim", [("small", 8, 512), ("xxl", 24, 4096)])
def test_reference_commands_parse_mt5_sizes_and_decoding(size, layers, emb_dim):
  """`--gin_file=prompt_tuning/configs/models/mt5_<size>_prompt.gin` + `models/decoding/beam_search.gin`."""
  gin.clear_config(clear_constants=True)
  try:
    gin_utils.parse_gin([f"prompt_tuning/configs/models/mt5_{size}_prompt.gin",
                         "prompt_tuning/configs/models/decoding/beam_search.gin"], ["PROMPT_LENGTH = 5"])
    cfg = gin.get_configurable(t5_config.T5Config)()
    assert (cfg.vocab_size, cfg.num_encoder_layers, cfg.emb_dim) == (250112, layers, emb_dim)
    assert gin.query_parameter("%PROMPT_LENGTH") == 5
    assert gin.query_parameter("decoding.beam_search.alpha") == pytest.approx(0.6)
  finally:
    gin.clear_config(clear_constants=True)


def test_missing_files_still_name_the_search_paths():
  gin.clear_config(clear_constants=True)
  try:
    with pytest.raises(gin_utils.ConfigError, match="prompt_tuning/configs/models/nope.gin|models/nope.gin"):
      gin_utils.parse_gin(["prompt_tuning/configs/models/nope.gin"], [])
  finally:
    gin.clear_config(clear_constants=True)


def test_t5x_scheduler_binding_name_reaches_our_scheduler():
  """T5X users write `utils.create_learning_rate_scheduler.*`; our run gins import runtime.configs as `utils` and
  call `schedules.create_learning_rate_scheduler` (as runs/finetune.gin does)."""
  gin.clear_config(clear_constants=True)
  try:
    gin.parse_config("""
        from __gin__ import dynamic_registration
        import prompt_tuning.runtime.configs as utils
        import prompt_tuning.runtime.schedules as schedules
        utils.create_learning_rate_scheduler.factors = 'constant'
        utils.create_learning_rate_scheduler.base_learning_rate = 0.05
        LR_FN = @schedules.create_learning_rate_scheduler()
    """)
    assert float(gin.query_parameter("%LR_FN").scoped_configurable_fn()(10)) == pytest.approx(0.05)
  finally:
    gin.clear_config(clear_constants=True)


def test_macros_follow_includes_and_skip_comments_strings_and_block_parameters(tmp_path):
  (tmp_path / "inner.gin").write_text("x.y = %INNER\n")
  (tmp_path / "outer.gin").write_text("include 'inner.gin'\n# z = %COMMENTED\nA = '%IN_STRING'\nB = [%A,\n  %SPLIT]\n"
                                      "block.f:\n  c = %IN_BLOCK\n  D = 1\n")
  found = gin_files.macros(["outer.gin"], ["E = %F"], [str(tmp_path)])
  assert found.read == {"INNER", "A", "SPLIT", "IN_BLOCK", "F"} and found.bound == {"A", "B", "E"}
  assert gin_files.macros(["outer.gin", "missing.gin"], [], [str(tmp_path)]) is None  # nothing here can tell


@pytest.mark.parametrize("files", [
    ["models/t5_1_1_demo_prompt.gin", "prompts/from_class_labels.gin"],
    ["models/t5_1_1_demo_prompt.gin", "prompts/random_uniform.gin", "families/prefix.gin"],
    ["models/t5_1_1_demo.gin", "families/ia3.gin"],
    ["prompt_tuning/configs/models/mt5_small_prompt.gin", "decoding/beam_search.gin"],
])
def test_macros_read_are_the_references_of_gins_own_parse(files):
  """The static scan (what the CLIs' check and a sweep go by) sees the macro references gin's parse holds."""
  gin.clear_config(clear_constants=True)
  try:
    gin_utils.parse_gin(files, [], [])
  except gin_utils.ConfigError:
    pass  # a required macro left unset: the config is parsed all the same
  try:
    config = gin.config._CONFIG  # pylint: disable=protected-access  # gin has no public walk of its bindings
    referenced = {"/".join(ref.scopes) for ref in gin.config.iterate_references(config)
                  if ref.configurable.wrapped is gin.config.macro}
  finally:
    gin.clear_config(clear_constants=True)
  assert gin_files.macros(files).read - {"gin.REQUIRED"} == referenced
