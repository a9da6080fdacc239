"""The jitted train step and the `Trainer` that runs it (T5X's split: `train.py` wires, the trainer trains).

`TrainState` holds the trainable parameters, their optimizer state and the step. Frozen parameters are a
separate, never-donated argument: they are not differentiated, copied or updated, so they stay bit-identical.

`Trainer` owns a run's state, its partitioned train and eval steps, the evaluations, the checkpoint cadence (a save
every period, at the end and on SIGTERM), the NaN check and the train metrics (progress lines, TensorBoard). It
imports the TensorFlow-backed modules (summaries, evaluation) where it uses them, so the step alone stays light.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.errors import NonFiniteError
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.optim import merge_trainable, set_optimizer_step
from prompt_tuning.runtime.state_init import RunParams, nonfinite_counts

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar, the global step (continues from a restored checkpoint's)
  params: Any  # trainable parameters only
  opt_state: Any
  first_nonfinite_step: Array  # int32, -1 until a step produces a NaN/Inf loss


def init_train_state(params: Any, optimizer: optax.GradientTransformation, step: int = 0,
                     mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """A fresh state at `step`: the optimizer counters start there too (T5X continues an initial checkpoint's
  step). With a `mesh`, optimizer leaves held by one device are replicated over it."""
  opt_state = jax.jit(optimizer.init)(params)
  if step:
    opt_state = set_optimizer_step(opt_state, step)
  if mesh is not None:
    opt_state = replicate_local_leaves(opt_state, mesh)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state,
                    first_nonfinite_step=jnp.asarray(-1, jnp.int32))


def replicate_local_leaves(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Leaves held by one local device (e.g. optimizer counters, which jit returns as constants) made replicated
  over the mesh: with several processes Orbax saves only global arrays."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    if len(x.sharding.device_set) == mesh.size:
      return x
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, replicated, lambda idx: value[idx])
  return jax.tree_util.tree_map(place, tree)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}.")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def make_train_step(model: EncoderDecoderModel, optimizer: optax.GradientTransformation,
                    num_microbatches: int | None = None,
                    dropout: bool = True) -> Callable[[TrainState, Any, Batch, Array], tuple[TrainState, dict]]:
  """`train_step(state, frozen_params, batch, rng) -> (state, metrics)`; jit it with `donate_argnums=0`."""

  def loss_and_grad(trainable, frozen, batch, rng):
    def loss_fn(p):
      return model.loss_fn(merge_trainable(p, frozen), batch, rng if dropout else None)
    return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

  def train_step(state: TrainState, frozen: Any, batch: Batch, rng: Array):
    step_rng = jax.random.fold_in(rng, state.step)
    if not num_microbatches or num_microbatches <= 1:
      (loss, metrics), grads = loss_and_grad(state.params, frozen, batch, step_rng)
    else:
      micro = _split_microbatches(batch, num_microbatches)

      def body(i, carry):
        grad_acc, loss_acc, metrics_acc = carry
        mb = jax.tree_util.tree_map(lambda x: x[i], micro)
        (loss_i, metrics_i), g = loss_and_grad(state.params, frozen, mb, jax.random.fold_in(step_rng, i))
        add = lambda a, b: a + b.astype(a.dtype)
        return (jax.tree_util.tree_map(add, grad_acc, g), loss_acc + loss_i,
                jax.tree_util.tree_map(add, metrics_acc, metrics_i))

      zeros_g = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(lambda: loss_and_grad(state.params, frozen, first, step_rng)[0][1])
      zeros_m = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
      grads, loss, metrics = jax.lax.fori_loop(0, num_microbatches, body, (zeros_g, jnp.float32(0.0), zeros_m))
      grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
      # Ratios (accuracy, per-token losses) were summed over microbatches: average them.
      metrics = {k: v if k in ("loss", "z_loss", "cross_ent_loss") else v / num_microbatches
                 for k, v in metrics.items()}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    first_bad = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           first_nonfinite_step=first_bad)
    metrics = dict(metrics, loss=loss)
    return new_state, metrics

  return train_step


def partition_train_step(train_step: Callable, state: TrainState, frozen: Any, frozen_shardings: Any,
                         partitioner: Any) -> tuple[Any, TrainState]:
  """Jit the step with explicit shardings: the state keeps its placement (so the step compiles once) and is
  donated; frozen weights are an ordinary, never-donated argument; the batch is split over 'data'."""
  mesh = partitioner.mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def placement(x):
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.NamedSharding) else replicated

  state_shardings = jax.tree_util.tree_map(placement, state)
  state = jax.device_put(state, state_shardings)
  step = partitioner.partition(train_step,
                               in_shardings=(state_shardings, frozen_shardings, partitioner.data_sharding, replicated),
                               out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return step, state


def make_eval_step(model: EncoderDecoderModel) -> Callable[[Any, Any, Batch], dict]:
  """Teacher-forced metrics (train_eval) without dropout: `eval_step(trainable, frozen, batch)`."""

  def eval_step(trainable, frozen, batch):
    _, metrics = model.loss_fn(merge_trainable(trainable, frozen), batch, None)
    return metrics

  return eval_step


class NonFiniteLossError(NonFiniteError):
  """Training produced a NaN or Inf loss, or parameters that are not finite."""


class Preemption:
  """SIGTERM (preemption) asks the loop to save and stop at the next step."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      pass

  def _handle(self, *_):
    self.requested = True


class MetricSums:
  """Step metrics summed on device; `mean()` fetches them (the only host sync) and starts over."""

  def __init__(self):
    self._sums: Any = None
    self.count = 0

  def add(self, metrics: Mapping[str, Array]) -> None:
    self._sums = metrics if self._sums is None else jax.tree_util.tree_map(lambda a, b: a + b, self._sums, metrics)
    self.count += 1

  def mean(self) -> dict[str, float]:
    mean = {k: float(v) / self.count for k, v in jax.device_get(self._sums).items()}
    self._sums, self.count = None, 0
    return mean


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """A run's settings besides the model and its state. Periods count from the step training starts at (T5X)."""

  model_dir: str
  batch_size: int  # global; with the feature lengths, for the throughput in progress lines and summaries
  feature_lengths: Mapping[str, int]
  learning_rate_fn: Callable[[Any], Any] | float = 0.3  # logged as `learning_rate`
  num_microbatches: int | None = None
  stats_period: int = 100
  eval_period: int | None = 1000  # None or 0: no evaluations during training
  save: bool = True  # False: no checkpoints at all
  save_period: int | None = None  # None or 0: save only at the start and at the end (or when preempted)


@dataclasses.dataclass
class Evaluations:
  """What an evaluation runs, in T5X's order: the teacher-forced training eval of each named dataset (written to
  `training_eval/<name>`), then `evaluator`'s inference eval with `runner` given the current parameters."""

  training_eval: Mapping[str, Callable[[], Iterable[Batch]]] = dataclasses.field(default_factory=dict)
  evaluator: Any = None  # seqio.Evaluator
  runner: Any = None  # evaluation.InferenceRunner


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Trainer:
  """Trains the trainable parameters of `run` with `optimizer` (T5X's `Trainer`).

  Construction resumes from the latest checkpoint in the model dir, else starts at the initial checkpoint's step
  and saves that starting point (as T5X does before the first step). `train_to` runs the loop.
  """

  def __init__(self, model: EncoderDecoderModel, optimizer: optax.GradientTransformation, run: RunParams,
               partitioner: Any, checkpointer: RunCheckpointer, config: TrainerConfig, rng: Array):
    from prompt_tuning.runtime import summaries  # pylint: disable=g-import-not-at-top  # TensorFlow (clu)
    self.partitioner, self.checkpointer, self.config = partitioner, checkpointer, config
    self.frozen, self._rng = run.frozen, rng
    state, self.position, resumed = self._restore_or_init(optimizer, run)
    step_fn = make_train_step(model, optimizer, config.num_microbatches,
                              dropout=model.module.config.dropout_rate > 0)
    self._train_step, self.state = partition_train_step(step_fn, state, run.frozen, run.frozen_shardings,
                                                        partitioner)
    self._eval_step = jax.jit(make_eval_step(model))
    self.step = self.first_step = int(state.step)  # periods count from here (T5X)
    self.writers = summaries.RunWriters(config.model_dir)
    self.last_eval: dict[str, Any] = {}
    self._train_metrics = MetricSums()
    self._last_good_saved = self.step if resumed else None  # what was restored is finite (checked at save)
    if config.save and not resumed:
      self.save()

  def _restore_or_init(self, optimizer: optax.GradientTransformation,
                       run: RunParams) -> tuple[TrainState, int, bool]:
    """(state, data position, resumed): the model dir's latest readable save beats the initial checkpoint (T5X
    order); unreadable newer saves are named and moved aside."""
    state = init_train_state(run.trainable, optimizer, run.checkpoint_step or 0, self.partitioner.mesh)
    restored = self.checkpointer.restore_latest(_abstract(state.params), _abstract(state.opt_state))
    if restored is None:
      return state, 0, False
    params, opt_state, step, position = restored
    logging.info("Resuming from %s/checkpoint_%d (data position %d).", self.config.model_dir, step, position)
    return state.replace(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state), position, True

  def train_to(self, end_step: int, batches: Iterator[Batch],
               evaluations: Evaluations | None = None) -> dict[str, Any]:
    """Train to the absolute step `end_step`, or until SIGTERM (then save and stop); `batches` continue from
    `self.position`. Returns the step, the last evaluation and the trainable and frozen parameters."""
    preemption = Preemption()
    progress = self._progress(end_step)
    with self.partitioner.activation_rules_context():
      while self.step < end_step:
        self._run_step(next(batches))
        self._after_step(self.step == end_step or preemption.requested, progress, evaluations)
        if preemption.requested:
          logging.warning("Preempted (SIGTERM): saved at step %d and stopping.", self.step)
          break
    return {"step": self.step, "eval": self.last_eval, "trainable": self.state.params, "frozen": self.frozen,
            "preempted": preemption.requested}

  def _progress(self, end_step: int) -> Any:
    from prompt_tuning.runtime import summaries  # pylint: disable=g-import-not-at-top
    lengths, batch_size = self.config.feature_lengths, self.config.batch_size
    return summaries.Progress(start_step=self.step, end_step=end_step,
                              tokens_per_step=batch_size * sum(lengths.values()), batch_size=batch_size,
                              target_tokens_per_step=batch_size * lengths["targets"], num_devices=jax.device_count())

  def _run_step(self, batch: Batch) -> None:
    self.state, metrics = self._train_step(self.state, self.frozen, self.partitioner.shard_batch(batch), self._rng)
    self.step += 1
    self.position += 1
    self._train_metrics.add(metrics)

  def _after_step(self, final: bool, progress: Any, evaluations: Evaluations | None) -> None:
    """Log every `stats_period` steps, save every `save_period`, evaluate every `eval_period`; each also at the
    last step."""
    cfg, done = self.config, self.step - self.first_step
    if done % cfg.stats_period == 0 or final:
      self._log_stats(progress)
    if cfg.save and ((cfg.save_period and done % cfg.save_period == 0) or final):
      self.save()
    if cfg.eval_period and (done % cfg.eval_period == 0 or final):
      self.evaluate(evaluations)

  def _log_stats(self, progress: Any) -> None:
    self.check_finite()
    averaged = self._train_metrics.mean()
    progress.log(self.step, averaged)
    lr_fn = self.config.learning_rate_fn
    lr = float(lr_fn(self.step) if callable(lr_fn) else lr_fn)
    self.writers.write_scalars("train", self.step, {**averaged, **progress.timing(self.step), "learning_rate": lr,
                                                    "learning_rate/current": lr})

  def check_finite(self) -> None:
    """Raise `NonFiniteLossError` if any step so far had a NaN/Inf loss."""
    bad = int(jax.device_get(self.state.first_nonfinite_step))
    if bad >= 0:
      raise NonFiniteLossError(
          f"The loss became NaN/Inf at step {bad}; training stopped without saving that state. "
          f"{self._last_good()} Lower the learning rate or check the data.")

  def _last_good(self) -> str:
    if self._last_good_saved is None:
      return f"No finite checkpoint was saved in {self.config.model_dir}."
    return f"The newest finite checkpoint is checkpoint_{self._last_good_saved} in {self.config.model_dir}."

  def check_params_finite(self) -> None:
    """Raise `NonFiniteLossError` if a trainable parameter holds NaN/Inf (e.g. from a NaN in the initial prompt)."""
    if any(nonfinite_counts(self.state.params).values()):
      start = "The initial trainable parameters" if self.step == self.first_step else "The trainable parameters"
      raise NonFiniteLossError(
          f"{start} at step {self.step} hold NaN/Inf; training stopped without saving them. {self._last_good()} "
          "Check the prompt initialisation (PROMPT_FILE, EMBEDDING_FILE, INITIAL_CHECKPOINT_PATH) and the "
          "learning rate.")

  def save(self) -> None:
    """Checkpoint the current step (parameters, optimizer state, data position), unless a loss or a parameter is
    not finite: a non-finite checkpoint is never written."""
    self.check_finite()
    self.check_params_finite()
    self.checkpointer.save(self.step, self.state.params, self.state.opt_state, self.position)
    self._last_good_saved = self.step

  def evaluate(self, evaluations: Evaluations | None) -> dict[str, Any]:
    """Run `evaluations` at the current step; the result is also kept as `last_eval`."""
    results: dict[str, Any] = {}
    evaluations = evaluations or Evaluations()
    for name, batches in evaluations.training_eval.items():
      metrics = self._training_eval(batches())
      if metrics is not None:
        self.writers.write_scalars("training_eval/" + name[:113], self.step, metrics)
        results.setdefault("training_eval", {})[name] = metrics
    if evaluations.evaluator is not None:
      from prompt_tuning.runtime import evaluation  # pylint: disable=g-import-not-at-top  # SeqIO, TensorFlow
      tick = time.time()
      evaluations.runner.set_params(self.state.params, self.frozen)
      results["inference_eval"] = evaluation.run_evaluation(evaluations.evaluator, evaluations.runner, self.step)
      # T5X's name and place: the inference evaluation's wall time, in the train summaries.
      self.writers.write_scalars("train", self.step, {"timing/evaluate_seconds": time.time() - tick})
    self.last_eval = results
    return results

  def _training_eval(self, batches: Iterable[Batch]) -> dict[str, float] | None:
    """Mean teacher-forced metrics over `batches` (None when there are none)."""
    sums = MetricSums()
    with self.partitioner.activation_rules_context():
      for batch in batches:
        sums.add(self._eval_step(self.state.params, self.frozen, self.partitioner.shard_batch(batch)))
    return sums.mean() if sums.count else None

  def close(self) -> None:
    """Wait for pending (asynchronous) saves and close the TensorBoard writers."""
    self.checkpointer.wait()
    self.writers.close()
