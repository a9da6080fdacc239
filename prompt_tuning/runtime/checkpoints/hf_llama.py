"""Read Hugging Face Llama-family checkpoints (`config.json` + safetensors, sharded or not) as a decoder-only tree.

The architecture is ours with Llama's switches (`models.config.DecoderOnlyConfig`): RMSNorm with the config's
epsilon, rotary position embeddings (plain, or scaled as `rope_scaling` / `rope_parameters` names: "linear",
"llama3"), grouped-query attention (`num_key_value_heads`), the SwiGLU MLP (gate -> `wi_0` with SiLU, up ->
`wi_1`, down -> `wo`) and a tied or untied output head (tied: logits against the embedding, unscaled). Attention
logits are scaled by head_dim**-0.5 at run time, so every kernel is the Hugging Face weight transposed.

A config field whose value this model does not implement (biases, another activation, sliding windows, partial
rotary embeddings, another RoPE type, attention dropout) raises a ValueError naming the field and what is
supported. Needs only `safetensors` and numpy, no PyTorch.
"""
from __future__ import annotations

from typing import Any, Mapping

from etils import epath
import numpy as np

from prompt_tuning.models.config import DecoderOnlyConfig
from prompt_tuning.models.layers import ROPE_TYPES
from prompt_tuning.runtime.checkpoints import hf
from prompt_tuning.runtime.checkpoints.shard_reads import array_equal

SUPPORTED_MODEL_TYPES = ("llama",)
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Fields whose other values change the computation in ways this model does not implement: field -> allowed values,
# the first being Hugging Face's default (a config.json may leave the field out).
_FIXED_FIELDS: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("silu",),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "sliding_window": (None,),
    "attention_dropout": (0.0,),
    "partial_rotary_factor": (1.0,),
}
# Parameters each RoPE type needs, besides rope_type and the base.
_ROPE_KEYS = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
_ATTENTION = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "out"}
_MLP = {"gate_proj": "wi_0", "up_proj": "wi_1", "down_proj": "wo"}
_EMBEDDING = "model.embed_tokens.weight"
_HEAD = "lm_head.weight"


def rope_settings(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
  """(base, scaling) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling` (older)."""
  params = dict(hf_config.get("rope_parameters") or {})
  params.update(hf_config.get("rope_scaling") or {})
  theta = float(params.pop("rope_theta", hf_config.get("rope_theta", 10000.0)))
  kind = params.pop("rope_type", params.pop("type", "default"))
  if kind not in _ROPE_KEYS:
    raise ValueError(f"rope_type={kind!r} is not supported; use one of {ROPE_TYPES} (dynamic, yarn and longrope "
                     "scalings are not implemented).")
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(f"partial_rotary_factor={params['partial_rotary_factor']} is not supported; rotary "
                     "embeddings here rotate the whole head (1.0).")
  missing = [k for k in _ROPE_KEYS[kind] if k not in params]
  if missing:
    raise ValueError(f"rope_type={kind!r} needs {missing} in the config's rope_scaling / rope_parameters.")
  scaling = {"rope_type": kind, **{k: params[k] for k in _ROPE_KEYS[kind]}} if kind != "default" else {}
  return theta, scaling


def decoder_only_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> DecoderOnlyConfig:
  """Our `DecoderOnlyConfig` for a Hugging Face Llama `config.json` dict; `overrides` (e.g. `dtype=`) win."""
  hf.check_config(hf_config, "Llama", SUPPORTED_MODEL_TYPES, _REQUIRED_KEYS)
  for field, allowed in _FIXED_FIELDS.items():
    if hf_config.get(field, allowed[0]) not in allowed:
      raise ValueError(f"{field}={hf_config[field]!r} is not supported by this decoder-only model, which "
                       f"supports only {field} in {list(allowed)}.")
  theta, scaling = rope_settings(hf_config)
  heads = hf_config["num_attention_heads"]
  fields = dict(
      vocab_size=hf_config["vocab_size"],
      emb_dim=hf_config["hidden_size"],
      num_heads=heads,
      num_kv_heads=hf_config.get("num_key_value_heads") or heads,
      head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
      mlp_dim=hf_config["intermediate_size"],
      num_layers=hf_config["num_hidden_layers"],
      dropout_rate=0.0,
      mlp_activations=("silu", "linear"),
      layer_norm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)),
      position_embedding="rotary",
      rope_theta=theta,
      rope_scaling=scaling,
      scale_attention_logits=True,
      logits_via_embedding=bool(hf_config.get("tie_word_embeddings", False)),
      tied_logits_scaled=False,
  )
  return DecoderOnlyConfig(**{**fields, **overrides})


def _name_map(config: DecoderOnlyConfig) -> dict[str, tuple[str, bool]]:
  """HF tensor name -> (our '/'-joined parameter path, whether the array is transposed between them)."""
  names = {_EMBEDDING: ("decoder/token_embedder/embedding", False),
           "model.norm.weight": ("decoder/decoder_norm/scale", False)}
  if not config.logits_via_embedding:
    names[_HEAD] = ("decoder/logits_dense/kernel", True)
  for i in range(config.num_layers):
    hf_layer, ours = f"model.layers.{i}.", f"decoder/layers_{i}/"
    names[hf_layer + "input_layernorm.weight"] = (ours + "pre_self_attention_layer_norm/scale", False)
    names[hf_layer + "post_attention_layernorm.weight"] = (ours + "pre_mlp_layer_norm/scale", False)
    for hf_name, name in _ATTENTION.items():
      names[f"{hf_layer}self_attn.{hf_name}.weight"] = (f"{ours}self_attention/{name}/kernel", True)
    for hf_name, name in _MLP.items():
      names[f"{hf_layer}mlp.{hf_name}.weight"] = (f"{ours}mlp/{name}/kernel", True)
  return names


def load_hf_llama(path: epath.PathLike, dtype: Any = np.float32, lazy: bool = False,
                  ) -> tuple[dict, DecoderOnlyConfig]:
  """`(params, config)` from a Hugging Face Llama dir, parameters cast to `dtype`, for `models.DecoderOnly`.

  The tree has unrolled layers (`decoder/layers_0`, ...); `models.scan_utils.stack_layers` gives the scanned one.
  A stored `lm_head.weight` equal to the embedding counts as tied. The config keeps the default activation dtype:
  `config.replace(dtype=...)` to change it. With `lazy` (local dirs), the parameters are `StoredArray`s read slice
  by slice when placed.
  """
  root = epath.Path(path)
  config = decoder_only_config_from_hf(hf.read_config(root))
  tensors = {k: v for k, v in hf.read_safetensors(root, lazy).items() if not k.endswith("rotary_emb.inv_freq")}
  if _EMBEDDING not in tensors:
    raise ValueError(f"{str(root)!r} holds no {_EMBEDDING}; it is not a LlamaForCausalLM checkpoint.")
  head = tensors.get(_HEAD)
  if head is not None and config.logits_via_embedding:
    if not array_equal(head, tensors[_EMBEDDING]):
      raise ValueError(f"{str(root)!r} sets tie_word_embeddings but its lm_head.weight differs from the "
                       "embedding; set tie_word_embeddings to false in config.json.")
    del tensors[_HEAD]
  if head is None and not config.logits_via_embedding:
    raise ValueError(f"{str(root)!r} has no lm_head.weight and tie_word_embeddings is false; set it to true if the "
                     "head is the embedding.")
  return hf.rename_tensors(tensors, _name_map(config), root, dtype), config


def config_from_dir(path: epath.PathLike, **overrides: Any) -> DecoderOnlyConfig:
  """The `DecoderOnlyConfig` of a Hugging Face Llama folder's `config.json` (for gin: models/llama_prompt.gin)."""
  return decoder_only_config_from_hf(hf.read_config(path), **overrides)
