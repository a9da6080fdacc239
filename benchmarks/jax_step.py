"""Our train step as `prompt_tuning.train` runs it (jitted, state donated), on random weights and tokens.

Prompt tuning: the T5 1.1 model with a 100-token prefix prompt, only the prompt trains, with the paper's
Adafactor (`models/t5_1_1_prompt.gin`). Model tuning: the same T5 without a prompt, every parameter trains,
with T5's fine-tuning Adafactor (`models/t5_1_1.gin`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks.flops import step_flops, xla_flops
from benchmarks.shapes import StepShape, random_batch, random_decoder_batch
from prompt_tuning import prompts
from prompt_tuning.family import PROMPT_REGEX, PromptFamily
from prompt_tuning.models.config import DecoderOnlyConfig, T5Config
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.runtime import optim
from prompt_tuning.runtime.models import BaseModel, DecoderOnlyModel, EncoderDecoderModel
from prompt_tuning.runtime.partitioning import Partitioner
from prompt_tuning.runtime.state_init import input_shapes_for
from prompt_tuning.runtime.trainer import TrainState, init_train_state, make_train_step

TUNING_MODES = ("prompt", "model")


def check_mode(mode: str) -> None:
  if mode not in TUNING_MODES:
    raise ValueError(f"Tuning mode {mode!r} is not one of {TUNING_MODES}.")


def mode_shape(shape: StepShape, mode: str) -> StepShape:
  """Model tuning trains the plain model: the same batch without a prompt."""
  check_mode(mode)
  return shape if mode == "prompt" else shape.without_prompt()


# PEFT's layout for a causal LM: the prompt first, causal among itself.
DECODER_PROMPT_ATTENTION = ("input->input", "input->prompt", "prompt->input", "prompt->prompt;causal")


def is_decoder_only(config: T5Config | DecoderOnlyConfig) -> bool:
  return isinstance(config, DecoderOnlyConfig)


def make_model(config: T5Config | DecoderOnlyConfig, prompt_length: int) -> BaseModel:
  family = None
  if prompt_length:
    family = PromptFamily(functools.partial(prompts.PromptedInputs, prompts.Prompt(prompt_length), "prefix"),
                          prompt_attention=DECODER_PROMPT_ATTENTION if is_decoder_only(config) else None)
  if is_decoder_only(config):
    return DecoderOnlyModel(DecoderOnly(config, family))
  return EncoderDecoderModel(EncoderDecoder(config, family))


def make_batch(config: T5Config | DecoderOnlyConfig, shape: StepShape, seed: int = 0) -> dict[str, Any]:
  """Random tokens as the model's features: encoder-decoder pairs, or one prefix-LM sequence."""
  make = random_decoder_batch if is_decoder_only(config) else random_batch
  return make(shape, config.vocab_size, seed)


def make_optimizer(mode: str) -> optax.GradientTransformation:
  """The Adafactor settings of the prompt-tuning and model-tuning gin files."""
  check_mode(mode)
  if mode == "prompt":
    return optim.adafactor(0.3, decay_rate=0.8, multiply_by_parameter_scale=False, weight_decay_rate=1e-5)
  return optim.adafactor(1e-3, decay_rate=0.8, multiply_by_parameter_scale=True, weight_decay_rate=None)


def trainable_regexes(mode: str) -> list[str]:
  check_mode(mode)
  return [PROMPT_REGEX] if mode == "prompt" else [".*"]


def jit_train_step(model: BaseModel, mode: str) -> Any:
  """As `prompt_tuning.train`: the state (argument 0) is donated."""
  step = make_train_step(model, make_optimizer(mode), dropout=model.module.config.dropout_rate > 0)
  return jax.jit(step, donate_argnums=(0,))


@dataclasses.dataclass
class JaxStep:
  """A compiled train step and its live inputs; `run(n)` dispatches n steps and waits only at the end."""

  compiled: Any
  state: TrainState
  frozen: Any
  batch: dict[str, jax.Array]
  rng: jax.Array
  compile_s: float
  xla_flops: float | None  # None with scan_layers: XLA's cost analysis counts a loop body once
  analytic_flops: float
  memory: Any  # XLA's CompiledMemoryStats

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.state, _ = self.compiled(self.state, self.frozen, self.batch, self.rng)
    jax.block_until_ready(self.state)
    return time.perf_counter() - start


def build_step(config: T5Config | DecoderOnlyConfig, shape: StepShape, mode: str, seed: int = 0) -> JaxStep:
  """Random weights on the default device, the step compiled ahead of time (compile time measured)."""
  shape = mode_shape(shape, mode)
  model = make_model(config, shape.prompt_length)
  shapes = input_shapes_for(model, {"inputs": shape.input_length, "targets": shape.target_length}, shape.batch)
  init = jax.jit(lambda key: nn.meta.unbox(model.get_initial_variables(key, shapes)["params"]))
  trainable, frozen = optim.split_trainable(init(jax.random.PRNGKey(seed)), trainable_regexes(mode))
  state = init_train_state(trainable, make_optimizer(mode))
  batch = jax.device_put(make_batch(config, shape, seed))
  rng = jax.random.PRNGKey(seed + 1)
  start = time.perf_counter()
  compiled = jit_train_step(model, mode).lower(state, frozen, batch, rng).compile()
  compile_s = time.perf_counter() - start
  xla = None if config.scan_layers else xla_flops(compiled)
  return JaxStep(compiled, state, frozen, batch, rng, compile_s, xla,
                 step_flops(config, shape, mode), compiled.memory_analysis())


# ------------------------------------------------------------------------------------------ abstract (AOT)
def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def lower_abstract(config: T5Config, shape: StepShape, mode: str, partitioner: Partitioner) -> Any:
  """The train step lowered from shapes only, parameters and batch sharded as `partitioner` says."""
  shape = mode_shape(shape, mode)
  model = make_model(config, shape.prompt_length)
  shapes = input_shapes_for(model, {"inputs": shape.input_length, "targets": shape.target_length}, shape.batch)
  boxed = jax.eval_shape(lambda key: model.get_initial_variables(key, shapes), jax.random.PRNGKey(0))["params"]
  params = _abstract(nn.meta.unbox(boxed), partitioner.params_shardings(boxed))  # unboxed outside the mesh
  trainable, frozen = optim.split_trainable(params, trainable_regexes(mode))
  with partitioner.activation_rules_context():
    tx = make_optimizer(mode)
    # The optimizer state's shardings are what XLA propagates from the parameters, as `jax.jit(tx.init)` in train.
    opt_shardings = jax.jit(tx.init).lower(trainable).compile().output_shardings
    opt_state = _abstract(jax.eval_shape(tx.init, trainable), opt_shardings)
    replicated = jax.sharding.NamedSharding(partitioner.mesh, jax.sharding.PartitionSpec())
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    state = TrainState(step=scalar, params=trainable, opt_state=opt_state, first_nonfinite_step=scalar)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=partitioner.data_sharding)
             for k, v in random_batch(shape, 8).items()}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
    return jit_train_step(model, mode).lower(state, frozen, batch, rng)
