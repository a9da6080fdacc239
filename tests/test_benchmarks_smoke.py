"""Benchmark harness code paths at toy sizes: FLOP formulas against XLA's count, the worker protocol, the
summary maths, the AOT table and the PyTorch peer (skipped without torch/peft). No timing is asserted."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading

import jax
import numpy as np
import pytest

from benchmarks import aot_memory, flops, jax_step, step_time, workers
from benchmarks.shapes import StepShape, random_batch
from prompt_tuning.models.config import T5Config, get_config

# Matmul-dominated toy: element-wise work (norms, softmax, optimizer) stays a small share of XLA's count.
TOY = T5Config(vocab_size=512, emb_dim=128, num_heads=2, head_dim=64, mlp_dim=256, num_encoder_layers=1,
               num_decoder_layers=2, dtype="float32")
SHAPE = StepShape(batch=2, input_length=24, target_length=4, prompt_length=8)


@pytest.fixture(scope="module")
def prompt_step() -> jax_step.JaxStep:
  return jax_step.build_step(TOY, SHAPE, "prompt")


def test_reference_shape_needs_about_185_gflop_per_prompt_step():
  small = get_config("small")
  prompt = flops.step_flops(small, StepShape(), "prompt")
  forward = flops.step_flops(small, StepShape(), "forward")
  assert 180e9 < prompt < 190e9
  # Input gradients only: one more forward pass, plus the second operand of the attention products.
  assert 2.0 < prompt / forward < 2.2
  model = flops.step_flops(small, StepShape().without_prompt(), "model")
  assert model == pytest.approx(3 * flops.step_flops(small, StepShape().without_prompt(), "forward"))


def test_analytic_flops_match_xla_cost_analysis_for_prompt_tuning(prompt_step):
  # XLA adds element-wise work on top of the matmuls; weight gradients would add about 50% more.
  assert prompt_step.analytic_flops == flops.step_flops(TOY, SHAPE, "prompt")
  assert 1.0 <= prompt_step.xla_flops / prompt_step.analytic_flops < 1.1


def test_analytic_flops_match_xla_cost_analysis_for_model_tuning():
  step = jax_step.build_step(TOY, SHAPE, "model")
  assert step.analytic_flops == flops.step_flops(TOY, SHAPE.without_prompt(), "model")
  assert 1.0 <= step.xla_flops / step.analytic_flops < 1.3  # + Adafactor over every parameter
  assert step.memory.alias_size_in_bytes >= 0.9 * step.memory.output_size_in_bytes  # state donated


def test_scanned_steps_report_no_xla_flop_count():
  """XLA's cost analysis counts a while-loop body once, so a scanned step's count would be ~1/layers too low."""
  step = jax_step.build_step(dataclasses.replace(TOY, scan_layers=True), SHAPE, "prompt")
  assert step.xla_flops is None and step.analytic_flops == flops.step_flops(TOY, SHAPE, "prompt")


def test_step_runs_donates_its_state_and_trains_only_the_prompt(prompt_step):
  before = prompt_step.state
  prompt_0 = np.asarray(before.params["encoder"]["prompt"]["prompt"]["prompt"]).copy()  # a view would pin it
  assert prompt_step.run(2) > 0
  assert before.params["encoder"]["prompt"]["prompt"]["prompt"].is_deleted()  # donated to the step
  assert int(prompt_step.state.step) == 2
  prompt_2 = np.asarray(prompt_step.state.params["encoder"]["prompt"]["prompt"]["prompt"])
  assert np.all(np.isfinite(prompt_2)) and not np.allclose(prompt_0, prompt_2)
  assert [x.shape for x in jax.tree_util.tree_leaves(prompt_step.state.params)] == [
      (SHAPE.prompt_length, TOY.emb_dim)]
  mem = prompt_step.memory
  assert mem.argument_size_in_bytes > 4 * TOY.vocab_size * TOY.emb_dim  # the frozen weights are inputs


def test_random_batch_is_unpadded_and_shifted():
  batch = random_batch(SHAPE, 100, seed=3)
  assert batch["encoder_input_tokens"].shape == (2, 24) and batch["encoder_input_tokens"].min() >= 2
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
  assert (batch["decoder_input_tokens"][:, 0] == 0).all()
  with pytest.raises(ValueError, match="prompt_length"):
    StepShape(prompt_length=-1)
  with pytest.raises(ValueError, match="prompt_length > 0"):
    flops.step_flops(TOY, SHAPE.without_prompt(), "prompt")


def test_worker_protocol_runs_and_reports_memory():
  parent, child = multiprocessing.Pipe()
  spec = {"label": "peak", "framework": "peak", "device": "cpu", "dtype": "float32", "sizes": (64,)}
  thread = threading.Thread(target=workers.serve, args=(child, spec), daemon=True)
  thread.start()
  ready = parent.recv()
  assert ready["ok"], ready.get("traceback")
  parent.send({"cmd": "run", "steps": 1})
  reply = parent.recv()
  assert reply["result"]["jax"] > 0 and reply["cpu_s"] >= 0 and reply["minor_faults"] >= 0
  parent.send({"cmd": "stats"})
  stats = parent.recv()
  assert stats["peak_rss_steps"] >= stats["rss_now"] > 0
  parent.send({"cmd": "stop"})
  assert parent.recv() == {"stopped": True}
  thread.join(timeout=10)


class _CountingStep:
  """A stand-in train step that records how many steps each call runs."""

  def __init__(self, spec):
    self.info, self.calls = {}, spec["calls"]

  def run(self, n: int) -> float:
    self.calls.append(n)
    return float(n)


def test_warmup_steps_run_untimed_right_before_the_timed_ones(monkeypatch, capsys):
  calls: list[int] = []
  monkeypatch.setitem(workers.BUILDERS, "counting", _CountingStep)
  monkeypatch.setitem(workers.IMPORTS, "counting", ())
  parent, child = multiprocessing.Pipe()
  thread = threading.Thread(target=workers.serve, args=(child, {"framework": "counting", "calls": calls}),
                            daemon=True)
  thread.start()
  assert parent.recv()["ok"]
  parent.send({"cmd": "run", "steps": 2, "warmup": 3})
  assert parent.recv()["result"] == 2.0  # only the timed call's
  assert calls == [1, 1, 1, 1, 2]  # the setup step, 3 warm-up steps, then the 2 timed ones
  parent.send({"cmd": "stop"})
  thread.join(timeout=10)
  with pytest.raises(SystemExit):
    step_time.main(["--warmup_steps_per_round=-1", "--runs=ours:prompt", "--rounds=1"])
  assert "--warmup_steps_per_round=-1 must be >= 0" in capsys.readouterr().err


def test_a_worker_that_dies_is_reported_not_waited_on_forever():
  """A worker killed mid-benchmark (OOM killer, a crash inside XLA) must not hang the parent."""
  spec = {"label": "peak", "framework": "peak", "device": "cpu", "dtype": "float32", "sizes": (64,)}
  worker = step_time.Worker(multiprocessing.get_context("spawn"), spec)
  assert worker.ok, worker.error
  worker.process.kill()
  worker.process.join(timeout=30)
  with pytest.raises(step_time.WorkerDied, match=r"'peak' exited with code -9"):
    worker.call(cmd="run", steps=1)
  assert not worker.ok and "exited" in worker.error
  worker.stop()  # a dead worker is not asked to stop


class _FakeWorker:
  def __init__(self, info):
    self.ok, self.info, self.error = True, info, None

  def call(self, **_):
    return {"peak_rss_steps": 3 * 2**30, "rss_now": 2**30, "device_peak_bytes": None}


def test_summary_takes_per_round_ratios_and_utilisation():
  specs = [{"label": "ours:prompt", "framework": "ours", "mode": "prompt", "tokens": 100, "analytic_flops": 1e12},
           {"label": "peft:prompt", "framework": "peft", "mode": "prompt", "tokens": 100, "analytic_flops": 1e12}]
  fake = {s["label"]: _FakeWorker({"rss_after_imports": 2**30, "xla_flops": 1.1e12}) for s in specs}
  rounds = [{"load": 1.0, "peak": {"jax": 1e12}, "times": {"ours:prompt": 2.0, "peft:prompt": 4.0}},
            {"load": 3.0, "peak": {"jax": 0.5e12}, "times": {"ours:prompt": 4.0, "peft:prompt": 4.0}},
            {"load": 2.0, "peak": {"jax": 1e12}, "times": {"ours:prompt": 3.0, "peft:prompt": 12.0}}]
  for r in rounds:
    r["cpu_s"] = {k: 2 * v for k, v in r["times"].items()}
    r["minor_faults"] = {k: 10 for k in r["times"]}
  summary = step_time.summarise(specs, fake, rounds, steps_per_round=2)
  ours = summary["runs"]["ours:prompt"]
  assert ours["median_step_s"] == 1.5 and ours["tokens_per_s"] == pytest.approx(100 / 1.5)
  assert ours["median_cpu_s_per_step"] == 3.0 and ours["median_minor_faults_per_step"] == 5
  assert ours["ratio_to_peft:prompt"] == pytest.approx(0.5)  # median of 0.5, 1.0, 0.25
  assert ours["utilisation_of_matmul_peak"] == pytest.approx(1.0)  # per round: 1, 1, 2/3
  assert ours["xla_tflops_per_s"] == pytest.approx(1.1 / 1.5)
  assert ours["peak_rss_over_imports_gib"] == pytest.approx(2.0)
  assert "ours:prompt" in step_time.format_table(summary)


def test_run_specs_are_validated():
  spec = step_time.parse_run("ours:prompt:fused:remat=full")
  assert (spec.framework, spec.mode, spec.options) == ("ours", "prompt", {"fused": "1", "remat": "full"})
  assert step_time.parse_run("peft:prompt:dtype=bfloat16").options == {"dtype": "bfloat16"}
  for bad in ("ours", "peft:model", "hf:prompt", "ours:prompt:turbo", "peft:prompt:fused", "torch:prompt"):
    with pytest.raises(ValueError):
      step_time.parse_run(bad)


def test_aot_compile_reports_per_device_memory_on_a_one_device_layout():
  row = aot_memory.compile_one("tiny", "prompt", aot_memory.Layout.parse("1x1"), StepShape(2, 8, 4, 4), "full",
                               scan=True)
  assert row["per_device_gib"] >= row["argument_gib"] > 0 and row["fits_16gib"] and row["fits_80gib"]
  params_bytes = 4 * (get_config("tiny").vocab_size * get_config("tiny").emb_dim)  # the embedding alone
  assert row["argument_gib"] * aot_memory.GIB > params_bytes
  assert row["xla_flops_per_device"] is None  # a scanned loop is counted once by XLA, so it is not reported
  assert "TINY" in aot_memory.format_table([row])
  with pytest.raises(ValueError, match="do not divide"):
    aot_memory.Layout.parse("8x3")


def test_peft_peer_does_the_same_work():
  pytest.importorskip("torch")
  pytest.importorskip("peft")
  from benchmarks import peft_peer
  from prompt_tuning.runtime.checkpoints.hf import hf_config_from_t5
  step = peft_peer.build_step(hf_config_from_t5(TOY), SHAPE, "prompt")
  assert step.trainable_params == SHAPE.prompt_length * TOY.emb_dim
  assert step.model.base_model.lm_head.weight is not step.model.base_model.shared.weight  # T5 1.1: untied
  assert step.run(1) > 0
  counted = step.count_flops()  # PyTorch's counter misses the attention backward: within 15% below ours
  assert 0.85 < counted / flops.step_flops(TOY, SHAPE, "prompt") <= 1.01


# A Llama-shaped toy (grouped-query attention, SwiGLU, untied head) for the decoder-only comparison.
LLAMA_TOY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}


def test_decoder_only_prompt_step_flops_match_xla_and_the_peft_peer():
  from prompt_tuning.runtime.checkpoints.hf_llama import decoder_only_config_from_hf
  config = decoder_only_config_from_hf(LLAMA_TOY, dtype="float32")
  step = jax_step.build_step(config, SHAPE, "prompt")
  assert step.analytic_flops == flops.step_flops(config, SHAPE, "prompt")
  assert 1.0 <= step.xla_flops / step.analytic_flops < 1.1
  trainable = jax.tree_util.tree_leaves(step.state.params)
  assert [x.shape for x in trainable] == [(SHAPE.prompt_length, 128)]
  assert step.run(1) > 0
  pytest.importorskip("torch")
  pytest.importorskip("peft")
  from benchmarks import peft_peer
  peer = peft_peer.build_step(LLAMA_TOY, SHAPE, "prompt")
  assert peer.trainable_params == SHAPE.prompt_length * 128
  assert peer.batch["input_ids"].shape == (SHAPE.batch, SHAPE.input_length + SHAPE.target_length)
  assert int((peer.batch["labels"] >= 0).sum()) == SHAPE.batch * SHAPE.target_length  # loss on the targets
  counted = peer.count_flops()  # PyTorch's counter misses the attention backward
  assert 0.8 < counted / step.analytic_flops <= 1.05


def test_device_gpu_without_a_gpu_stops_at_once_with_the_fix(monkeypatch):
  """Without a CUDA jaxlib, JAX raises a bare AssertionError in every worker; the harness says what to install."""
  from benchmarks import cli_flags, matmul_peak
  try:
    cli_flags.require_jax_gpu()
  except RuntimeError:
    pass
  else:
    pytest.skip("JAX has a GPU on this machine")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for main, argv in ((step_time.main, ["--device=gpu", "--size=tiny", "--runs=ours:prompt", "--rounds=1"]),
                     (matmul_peak.main, ["--device=gpu"])):
    with pytest.raises(RuntimeError, match=r"finds no GPU here.*jax\[cuda12\]"):
      main(argv)
  assert os.environ["JAX_PLATFORMS"] == "cpu"  # nothing changed before the check


def test_gpu_peak_uses_bfloat16_and_sizes_big_enough_for_a_data_centre_card():
  """2048² bf16 products last about a kernel launch on an H100-class card: the GPU peak needs bigger ones."""
  from benchmarks import matmul_peak
  gpu, cpu = step_time.peak_spec("gpu"), step_time.peak_spec("cpu")
  assert gpu["dtype"] == "bfloat16" and min(gpu["sizes"]) >= 4096
  assert cpu["dtype"] == "float32" and tuple(cpu["sizes"]) == matmul_peak.DEFAULT_SIZES


def test_restore_benchmark_host_bytes_on_paper():
  """The on-paper per-host bytes: a host reads its devices' 'model' shards of sharded arrays, replicated ones whole."""
  from jax.sharding import PartitionSpec as P
  from benchmarks import restore
  specs = {"kernel": ((8, 16), P(None, "model")), "embedding": ((32, 8), P("model", None)), "scale": ((8,), P(None))}
  whole = (8 * 16 + 32 * 8 + 8) * 4
  assert restore.host_bytes(specs, devices=8, hosts=2, partitions=8) == ((8 * 16 + 32 * 8) * 4 // 2 + 32, whole)
  assert restore.host_bytes(specs, devices=8, hosts=2, partitions=4) == (whole, whole)  # 'model' within a host
  assert restore.host_bytes(specs, devices=32, hosts=8, partitions=16) == ((8 * 16 + 32 * 8) * 4 // 4 + 32, whole)
