"""The prompt-family seam: one object that tells the model and the runtime everything a family adds.

A `PromptFamily` declares
* the parameters it adds: the encoder's input prompt (`prompt`, a factory for the module at `encoder/prompt`),
  per-stack hook modules (`stack_hooks`: deep prompts, prefixes), and modules at named activation sites inside
  every layer (`site_hooks`: IA³ scalings);
* which parameters train (`trainable_regexes`) and which every save exports as numpy files (`export_regexes`);
* the batch features its prompt reads (`batch_features`, e.g. `TASK_IDS`) and, for a bank of task prompts, the
  task names whose examples eval and infer tag with their task id (`task_names`);
* its logical-axis rules (`logical_axis_rules`), which the partitioner appends to its own;
* extra loss terms (`loss_terms`: wayward distance, distillation) and inference hooks (`inference`: ensembles);
* whether the prompt reads a first pass of the frozen encoder (`encoder_first_pass`) and what the prompt
  positions see (`prompt_attention`, `prompt_tuning.masks`).

The model (`models/`), partitioning, training, evaluation, inference and export read only this object; a new family
is a new prompt or hook module plus a `PromptFamily` that names it (docs/prompt_families.md, "Adding a family").
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import flax.linen as nn
import jax

from prompt_tuning import masks

if TYPE_CHECKING:
  from prompt_tuning.runtime.models import EncoderDecoderModel

Array = jax.Array
Batch = Mapping[str, Array]
TASK_IDS = "task_ids"  # the batch feature that picks each example's task prompt
PROMPT_PATH = "encoder/prompt/prompt/prompt"  # where a prompt-tuning run keeps its prompt (the reference's path)
PROMPT_REGEX = ".*/prompt/.*"  # what plain prompt tuning trains and exports
# Prompt parameters stay replicated: the plain prompt, multi-task tables, and the generators' small MLPs.
PROMPT_AXIS_RULES = (("prompt", None), ("prompt_embed", None))
MULTI_TASK_AXIS_RULES = (("tasks", None), ("langs", None), ("prompt+embed", None))
# Activation sites a layer offers to `site_hooks`, and the module name each hook gets there (Flaxformer's).
SITES = {"keys": "k_conv", "values": "v_conv", "mlp_hidden": "intermediate_conv"}


@dataclasses.dataclass(frozen=True)
class StackInfo:
  """The shape of one stack, handed to per-stack hook factories."""

  name: str  # "encoder" or "decoder"
  num_layers: int
  emb_dim: int
  num_heads: int
  head_dim: int
  attentions: tuple[str, ...]  # the attention blocks of one layer, by module name
  prompt_length: int | None = None  # the input prompt's length (encoder), None without one
  prompt_combination: str | None = None  # how the input prompt joins the inputs (`prompts.COMBINATIONS`)


@dataclasses.dataclass(frozen=True)
class ForwardOutputs:
  """What a teacher-forced forward pass gives a loss term."""

  encoded: Array  # [B, encoder length (with the prompt), d]
  logits: Array  # [B, target length, vocab], float32
  loss: Array  # the task loss (cross-entropy + z-loss, as configured)


class LossTerm(Protocol):
  """An extra term of the training loss: returns (value added to the loss, metrics to log)."""

  def __call__(self, model: EncoderDecoderModel, params: Any, batch: Batch, outputs: ForwardOutputs,
               dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
    ...


class InferenceHooks(Protocol):
  """Serving several prompts per example (ensembles): expand the batch, then reduce each example's rows."""

  def expand_batch(self, batch: Batch) -> dict[str, Array]:
    ...

  def reduce_scores(self, scores: Array) -> Array:
    ...

  def reduce_decodes(self, decodes: Array, scores: Array, eos_id: int) -> tuple[Array, Array]:
    ...


def _as_tuple(value: Any) -> tuple:
  return tuple(value) if value is not None else ()


@dataclasses.dataclass(frozen=True, eq=False)
class PromptFamily:
  """A prompt family (module docstring). The default adds nothing: the frozen model as it is.

  Factories are called inside the model (`prompt()`, `stack_hooks[name](stack=StackInfo)`, `site_hooks[site]()`),
  so each model builds its own modules. A per-stack hook module returns a dict of arrays with a leading layer
  axis that the layers read by key: "inputs" -> `(keep [L], prompt [L, P, d])` rewrites the first P positions of
  each layer's input; an attention name -> `(keys, values)` [L, P, heads, head_dim] prefixes that attention. A
  hook returns {} (and adds no parameters) for a stack it does not serve. A site hook maps the activation at its
  site (`SITES`) to a new one of the same shape. Hooks given as None are left out (gin files set each hook by
  its own macro so that families combine).
  """

  prompt: Callable[[], nn.Module] | None = None
  stack_hooks: Mapping[str, Callable[..., nn.Module]] = dataclasses.field(default_factory=dict)
  site_hooks: Mapping[str, Callable[[], nn.Module]] = dataclasses.field(default_factory=dict)
  trainable_regexes: Sequence[str] = ()
  export_regexes: Sequence[str] | None = None  # None: the trainable regexes
  batch_features: Sequence[str] = ()
  task_names: Sequence[str] = ()
  logical_axis_rules: Sequence[tuple[str, Any]] = PROMPT_AXIS_RULES
  loss_terms: Sequence[LossTerm] = ()
  inference: InferenceHooks | None = None
  encoder_first_pass: bool = False
  prompt_attention: Sequence[str] | None = None

  def __post_init__(self):
    for name in ("trainable_regexes", "batch_features", "task_names", "loss_terms"):
      value = getattr(self, name)
      if isinstance(value, str):
        raise ValueError(f"PromptFamily.{name}={value!r} is a string; give a list, e.g. [{value!r}].")
      object.__setattr__(self, name, _as_tuple(value))
    object.__setattr__(self, "logical_axis_rules", tuple(tuple(r) for r in self.logical_axis_rules))
    for name in ("stack_hooks", "site_hooks"):  # None entries: hooks a gin file left unset
      object.__setattr__(self, name, {k: v for k, v in getattr(self, name).items() if v is not None})
    unknown = sorted(set(self.site_hooks) - set(SITES))
    if unknown:
      raise ValueError(f"PromptFamily.site_hooks has unknown sites {unknown}; choose from {sorted(SITES)}.")
    if self.prompt_attention is not None:
      if self.prompt is None:
        raise ValueError(f"PROMPT_ATTENTION={self.prompt_attention!r} sets how the input prompt is seen, but the "
                         "model has no input prompt (PROMPT_FACTORY is None); drop PROMPT_ATTENTION or use a "
                         "prompt model gin (models/*_prompt.gin).")
      if isinstance(self.prompt_attention, str):
        masks.normalise_attention(self.prompt_attention)  # raises, naming the fix
      masks.announce(tuple(self.prompt_attention))

  @property
  def exports(self) -> tuple[str, ...]:
    """The regexes of the parameters every save also writes as numpy files."""
    return self.trainable_regexes if self.export_regexes is None else tuple(self.export_regexes)

  def replace(self, **changes: Any) -> PromptFamily:
    return dataclasses.replace(self, **changes)

  def prompt_inputs(self, batch: Batch) -> dict[str, Array]:
    """The batch features handed to the prompt module as keyword arguments."""
    return {k: batch[k] for k in self.batch_features if k in batch}

  def task_id(self, task_name: str) -> int | None:
    """The id that picks `task_name`'s prompt, or None when prompts are not chosen by task name."""
    if not self.task_names:
      return None
    if task_name not in self.task_names:
      raise ValueError(f"Task {task_name!r} has no prompt in the bank, which serves {list(self.task_names)}; add "
                       "it to BANK_PROMPTS or leave it out of the mixture.")
    return self.task_names.index(task_name)


NO_FAMILY = PromptFamily()


def family_of(module: Any) -> PromptFamily:
  """The family a model module (or a model wrapper's module) was built with; `NO_FAMILY` for a plain model."""
  family = getattr(module, "family", None)
  if family is None:
    return NO_FAMILY
  if not isinstance(family, PromptFamily):
    raise TypeError(f"A model's family must be a prompt_tuning.family.PromptFamily, got {family!r}; wrap a prompt "
                    "factory as PromptFamily(prompt=factory).")
  return family
