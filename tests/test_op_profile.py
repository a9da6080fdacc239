"""`benchmarks.op_profile`: XLA CPU's trace events matched to HLO instructions, classified and summed.

No time is asserted: the tests check that the profile finds the step's operations, counts the matmul FLOPs
the step executes, and splits forward, remat recomputation and backward work.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import jax_step, op_profile
from benchmarks.shapes import StepShape
from prompt_tuning.models.config import T5Config

TOY = T5Config(vocab_size=512, emb_dim=128, num_heads=2, head_dim=64, mlp_dim=256, num_encoder_layers=2,
               num_decoder_layers=2, dtype="float32")
SHAPE = StepShape(batch=2, input_length=24, target_length=4, prompt_length=8)


def test_dims_reads_array_shapes_and_rejects_tuples():
  assert op_profile.dims("f32[8,228,512]{2,1,0}") == [8, 228, 512]
  assert op_profile.dims("f32[]") == []
  with pytest.raises(ValueError, match="Not an array shape"):
    op_profile.dims("(f32[], s32[])")


def test_parse_hlo_counts_a_dots_flops_and_classifies_the_rest():
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).T * 2.0)
  hlo = f.lower(jnp.ones((64, 32)), jnp.ones((32, 48))).compile().as_text()
  instructions = op_profile.parse_hlo(hlo)
  matmuls = [i for i in instructions.values() if i.category == "matmul"]
  assert matmuls and max(i.matmul_flops for i in matmuls) == 2 * 64 * 32 * 48
  assert all(i.matmul_flops == 0 for i in instructions.values() if i.category != "matmul")
  assert {i.category for i in instructions.values()} - {"matmul"}  # the tanh/transpose work is not a matmul
  assert {i.phase for i in instructions.values()} == {"forward"}


@pytest.mark.parametrize("remat", ["none", "minimal"])
def test_profile_of_a_prompt_step_finds_its_matmuls_and_phases(remat):
  config = dataclasses.replace(TOY, scan_layers=remat != "none", remat_policy=remat)
  step = jax_step.build_step(config, SHAPE, "prompt")
  step.run(1)
  report = op_profile.profile_step(step, steps=2, top=5)
  # XLA may turn the smallest products into element-wise work, so the executed count can only fall short a bit.
  assert 0.8 * step.analytic_flops < report["matmul_flops_per_step"] < 1.3 * step.analytic_flops
  assert report["by_category"]["matmul"] > 0 and report["by_phase"]["backward"] > 0
  assert report["op_seconds_per_step"] == pytest.approx(sum(report["by_category"].values()))
  assert report["op_seconds_per_step"] == pytest.approx(sum(report["by_phase"].values()))
  if remat == "none":
    assert report["by_phase"]["recompute"] == 0
  else:
    assert report["by_phase"]["recompute"] > 0  # remat repeats forward work inside the backward pass
    assert report["by_category"]["scan slicing"] > 0  # nn.scan slices the stacked layer weights
  components = {c["component"]: c for c in report["by_component"]}
  for part in ("encoder/attention", "encoder/attention/query", "encoder/mlp/wi_0", "decoder/mlp/wo"):
    assert components[part]["matmul_gflop_per_step"] > 0, part  # the name stack maps operations to the model
  assert sum(c["seconds_per_step"] for c in components.values()) == pytest.approx(report["op_seconds_per_step"])
  assert len(report["top_ops"]) == 5
  assert report["top_ops"][0]["seconds_per_step"] >= report["top_ops"][-1]["seconds_per_step"]


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "ops.json"
  report = op_profile.main(["--size=tiny", "--batch=2", "--input_length=8", "--target_length=4",
                            "--prompt_length=3", "--steps=1", "--top=3", "--run=ours:prompt:scan:remat=full",
                            f"--json={out}"])
  printed = capsys.readouterr().out
  assert "| matmul |" in printed and "ours:prompt:scan:remat=full" in printed
  saved = json.loads(out.read_text())
  assert saved["run"] == "ours:prompt:scan:remat=full" and saved["shape"]["prompt_length"] == 3
  assert saved["op_seconds_per_step"] == pytest.approx(report["op_seconds_per_step"])


def test_cli_rejects_the_pytorch_peer_with_the_fix():
  with pytest.raises(ValueError, match="our runs only"):
    op_profile.main(["--run=peft:prompt"])
