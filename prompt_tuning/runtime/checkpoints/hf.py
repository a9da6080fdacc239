"""Read and write Hugging Face T5 checkpoints (`config.json` + safetensors) as our Flaxformer-named tree.

Needs only `safetensors` (the `hf` extra, imported on first use) and numpy, no PyTorch. Hugging Face
`nn.Linear` weights are `[out, in]`, ours `[in, out]`; its relative-position table is `[buckets, heads]`, ours
`[heads, buckets]`: both are transposed.

Output head: Hugging Face T5 multiplies the decoder output by `d_model**-0.5` when `scale_decoder_outputs`
(transformers >= 5) or `tie_word_embeddings` (older; the default, T5 1.0) is set, then applies `lm_head`. A tied,
scaled head is exactly our `logits_via_embedding` (logits / sqrt(d) against the embedding); any other
combination becomes `logits_dense/kernel`, with the scale folded in when there is one.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import threading
from typing import Any, Mapping, Sequence

from etils import epath
from flax import traverse_util
from flax.core import meta
import numpy as np

from prompt_tuning.models.config import T5Config
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints.shard_reads import StoredArray, array_equal

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# Hugging Face `feed_forward_proj` -> our MLP activations. HF's "gated-gelu" is the tanh approximation
# (`gelu_new`), as ours; plain "gelu" is the exact erf GELU, which we do not implement.
FEED_FORWARD_PROJ = {
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
    "relu": ("relu",),
    "gelu_new": ("gelu",),
    "silu": ("silu",),
}
_REQUIRED_KEYS = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers")
# HF's T5 ignores this unused tensor, which some checkpoints hold; the embed_tokens copies must equal shared.weight.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}
_LAYER_NORM_EPSILON = 1e-6


def scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF T5 multiplies the decoder output by d_model**-0.5 before `lm_head`."""
  return bool(hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True)))


def check_config(hf_config: Mapping[str, Any], kind: str, supported: Sequence[str], required: Sequence[str],
                 note: str = "") -> None:
  """Refuse a `config.json` of another model type (default: `supported[0]`) or without a required key."""
  model_type = hf_config.get("model_type", supported[0])
  if model_type not in supported:
    raise ValueError(f"Hugging Face model_type={model_type!r} is not supported; convert one of "
                     f"{tuple(supported)}{note}.")
  missing = [k for k in required if k not in hf_config]
  if missing:
    raise ValueError(f"Hugging Face config lacks {missing}; a {kind} config.json needs all of {list(required)}.")


def t5_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> T5Config:
  """Our `T5Config` for a Hugging Face T5/mT5 `config.json` dict; `overrides` (e.g. `dtype=`) win."""
  check_config(hf_config, "T5", SUPPORTED_MODEL_TYPES, _REQUIRED_KEYS,
               " (umT5 has per-layer position biases, which T5 does not)")
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in FEED_FORWARD_PROJ:
    raise ValueError(f"feed_forward_proj={proj!r} is not supported; use one of {sorted(FEED_FORWARD_PROJ)} "
                     "(plain 'gelu' is the exact erf GELU, which differs from T5's tanh GELU).")
  eps = hf_config.get("layer_norm_epsilon", _LAYER_NORM_EPSILON)
  if not np.isclose(eps, _LAYER_NORM_EPSILON, rtol=0, atol=1e-12):
    raise ValueError(f"layer_norm_epsilon={eps} is not supported; T5 (and this model) use {_LAYER_NORM_EPSILON}.")
  fields = dict(
      vocab_size=hf_config["vocab_size"],
      emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"],
      head_dim=hf_config["d_kv"],
      mlp_dim=hf_config["d_ff"],
      num_encoder_layers=hf_config["num_layers"],
      num_decoder_layers=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
      dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
      relpos_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relpos_max_distance=hf_config.get("relative_attention_max_distance", 128),
      mlp_activations=FEED_FORWARD_PROJ[proj],
      logits_via_embedding=scales_decoder_output(hf_config),
  )
  return T5Config(**{**fields, **overrides})


def hf_config_from_t5(config: T5Config) -> dict[str, Any]:
  """The Hugging Face `config.json` dict for our `T5Config` (inverse of `t5_config_from_hf`)."""
  proj = next((name for name, acts in FEED_FORWARD_PROJ.items() if acts == tuple(config.mlp_activations)), None)
  if proj is None:
    raise ValueError(f"mlp_activations={config.mlp_activations} has no Hugging Face feed_forward_proj; "
                     f"supported: {sorted(set(FEED_FORWARD_PROJ.values()))}.")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "is_encoder_decoder": True,
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "num_heads": config.num_heads,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "dropout_rate": config.dropout_rate,
      "relative_attention_num_buckets": config.relpos_num_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "feed_forward_proj": proj,
      "layer_norm_epsilon": _LAYER_NORM_EPSILON,
      "tie_word_embeddings": config.logits_via_embedding,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
  }


def _name_map(config: T5Config) -> dict[str, tuple[str, bool]]:
  """HF tensor name -> (our '/'-joined parameter path, whether the array is transposed between them)."""
  mlp = ["wi"] if len(config.mlp_activations) == 1 else [f"wi_{i}" for i in range(len(config.mlp_activations))]
  names = {"shared.weight": ("token_embedder/embedding", False),
           "encoder.final_layer_norm.weight": ("encoder/encoder_norm/scale", False),
           "decoder.final_layer_norm.weight": ("decoder/decoder_norm/scale", False)}
  if not config.logits_via_embedding:
    names["lm_head.weight"] = ("decoder/logits_dense/kernel", True)

  def block(stack: str, i: int, sublayers: list[tuple[str, str, str]]) -> None:
    hf, ours = f"{stack}.block.{i}.layer.", f"{stack}/layers_{i}/"
    for j, (hf_module, module, norm) in enumerate(sublayers):
      names[f"{hf}{j}.layer_norm.weight"] = (ours + norm + "/scale", False)
      pairs = _ATTENTION.items() if hf_module != "DenseReluDense" else [(n, n) for n in mlp + ["wo"]]
      for hf_name, name in pairs:
        names[f"{hf}{j}.{hf_module}.{hf_name}.weight"] = (f"{ours}{module}/{name}/kernel", True)

  for i in range(config.num_encoder_layers):
    block("encoder", i, [("SelfAttention", "attention", "pre_attention_layer_norm"),
                         ("DenseReluDense", "mlp", "pre_mlp_layer_norm")])
  for i in range(config.num_decoder_layers):
    block("decoder", i, [("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                         ("EncDecAttention", "encoder_decoder_attention", "pre_cross_attention_layer_norm"),
                         ("DenseReluDense", "mlp", "pre_mlp_layer_norm")])
  for stack in ("encoder", "decoder"):
    names[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        f"{stack}/relpos_bias/rel_embedding", True)
  return names


def _safetensors():
  try:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Hugging Face checkpoints need the safetensors package: pip install 'prompt_tuning[hf]' "
                      "(or pip install 'safetensors>=0.4.3').") from e
  return safetensors.numpy


def _read_file(path: epath.Path) -> dict[str, np.ndarray]:
  if "://" in os.fspath(path):
    return _safetensors().load(path.read_bytes())
  return _safetensors().load_file(os.fspath(path))


class _ByteCount:
  """Bytes read by the lazy safetensors reader in this process (thread-safe)."""

  def __init__(self):
    self._lock, self.total = threading.Lock(), 0

  def add(self, n: int) -> None:
    with self._lock:
      self.total += n


_BYTES_READ = _ByteCount()


def bytes_read() -> int:
  """Bytes this process has read from local safetensors files through `read_safetensors(lazy=True)`: headers
  and tensor regions, as `pread` returned them."""
  return _BYTES_READ.total


def _pread(path: str, ranges: Sequence[tuple[int, int]]) -> bytearray:
  """The bytes at the (offset, length) `ranges` of a local file, one after another: one `pread` each, counted."""
  out = bytearray(sum(n for _, n in ranges))
  view, pos = memoryview(out), 0
  fd = os.open(path, os.O_RDONLY)
  try:
    for offset, n in ranges:
      done = 0
      while done < n:
        got = os.preadv(fd, [view[pos + done:pos + n]], offset + done)
        if not got:
          raise ValueError(f"{path!r} ends before byte {offset + n}; the safetensors file is truncated.")
        done += got
      pos += n
  finally:
    os.close(fd)
  _BYTES_READ.add(len(out))
  return out


def _runs(shape: tuple[int, ...], itemsize: int, index: tuple[slice, ...]) -> list[tuple[int, int]]:
  """(byte offset, length) of the contiguous pieces of the region `index` (unit steps) of a C-order array: one
  for a range of rows, one per row for a range of columns (per index of the leading dims in general)."""
  bounds = [s.indices(n) for s, n in zip(index, shape)]
  if any(step != 1 for _, _, step in bounds):
    raise ValueError(f"Safetensors regions are read with unit steps, not {list(index)}.")
  if any(stop <= start for start, stop, _ in bounds):
    return []
  strides = [itemsize * math.prod(shape[i + 1:]) for i in range(len(shape))]
  inner = len(shape) - 1  # dims after `inner` are whole: they join each piece
  while inner > 0 and bounds[inner][:2] == (0, shape[inner]):
    inner -= 1
  if inner < 0:  # a scalar
    return [(0, itemsize)]
  length = (bounds[inner][1] - bounds[inner][0]) * strides[inner]
  return [(sum(i * stride for i, stride in zip(outer, strides)) + bounds[inner][0] * strides[inner], length)
          for outer in itertools.product(*(range(start, stop) for start, stop, _ in bounds[:inner]))]


def _read_region(path: str, start: int, shape: tuple[int, ...], dtype: np.dtype,
                 index: tuple[slice, ...]) -> np.ndarray:
  """The region `index` of the tensor whose bytes begin at `start`: only its bytes are read."""
  data = _pread(path, [(start + offset, n) for offset, n in _runs(shape, dtype.itemsize, index)])
  region = tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))
  return np.frombuffer(data, dtype.newbyteorder("<")).reshape(region)


def _stored_file(path: epath.Path) -> dict[str, StoredArray]:
  """The tensors of a local safetensors file, left in it: each read takes just the bytes of its region.

  The file is 8 bytes of little-endian header length, the JSON header (each tensor's dtype, shape and
  `data_offsets` in the byte buffer after it), then the tensors' bytes; the header is read once, here.
  """
  path = os.fspath(path)
  size = os.path.getsize(path)
  length = int.from_bytes(_pread(path, [(0, 8)]), "little") if size >= 8 else size
  if not 0 < length <= size - 8:
    raise ValueError(f"{path!r} is not a safetensors file (header length {length}, file size {size}).")
  header = json.loads(bytes(_pread(path, [(8, length)])))
  stored = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{path!r}: tensor {name} has dtype {info['dtype']}, which numpy cannot read; supported: "
                       f"{sorted(_SAFETENSORS_DTYPES)}.")
    dtype, shape, (begin, end) = np.dtype(dtype), tuple(info["shape"]), info["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize or 8 + length + end > size:
      raise ValueError(f"{path!r}: tensor {name} {shape} {info['dtype']} has data_offsets {[begin, end]}, which do "
                       "not fit its size or the file; the safetensors file is damaged.")
    stored[name] = StoredArray(shape, dtype, functools.partial(_read_region, path, 8 + length + begin, shape, dtype),
                               name)
  return stored


def read_safetensors(path: epath.PathLike, lazy: bool = False) -> dict[str, np.ndarray | StoredArray]:
  """Every tensor of a HF model dir: `model.safetensors`, or the shards its index names.

  With `lazy` (local dirs), the tensors are `StoredArray`s, read slice by slice later.
  """
  root = epath.Path(path)
  read = _stored_file if lazy and "://" not in os.fspath(root) else _read_file
  if (root / WEIGHTS_FILE).exists():
    return read(root / WEIGHTS_FILE)
  if (root / INDEX_FILE).exists():
    shards = sorted(set(json.loads((root / INDEX_FILE).read_text())["weight_map"].values()))
    return {k: v for shard in shards for k, v in read(root / shard).items()}
  raise FileNotFoundError(f"{os.fspath(root)!r} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; save the Hugging Face "
                          "model with save_pretrained(..., safe_serialization=True).")


def _resolve_head(tensors: dict[str, np.ndarray], config: T5Config, scaled: bool) -> T5Config:
  """Drop duplicate embeddings and turn the HF head into ours (see the module docstring); may untie `config`."""
  shared = tensors["shared.weight"]
  for name in _TIED_EMBEDDINGS:
    if name in tensors and not array_equal(tensors.pop(name), shared):
      raise ValueError(f"{name} differs from shared.weight; T5 shares one embedding table, so this checkpoint "
                       "cannot be converted.")
  head = tensors.pop("lm_head.weight", shared)
  tied = head is shared or array_equal(head, shared)
  config = config.replace(logits_via_embedding=tied and scaled)
  if not config.logits_via_embedding:
    scale = np.float32(config.emb_dim ** -0.5)
    if scaled and isinstance(head, StoredArray):
      head = head.astype(np.float32).map(lambda x: x * scale)
    elif scaled:
      head = head.astype(np.float32) * scale
    tensors["lm_head.weight"] = head
  return config


def load_hf_t5(path: epath.PathLike, dtype: Any = np.float32, lazy: bool = False) -> tuple[dict, T5Config]:
  """`(params, config)` from a Hugging Face T5 dir (`config.json` + safetensors), parameters cast to `dtype`.

  With `lazy` (local dirs), the parameters are `StoredArray`s read slice by slice when placed; deciding whether
  the head is tied still compares tensors (block by block, stopping at the first difference).
  The tree has unrolled layers (`layers_0`, ...); use `models.scan_utils.stack_layers` for `scan_layers=True`.
  The config keeps the default activation dtype: `config.replace(dtype=...)` to change it.
  """
  root = epath.Path(path)
  hf_config = read_config(root)
  tensors = read_safetensors(root, lazy)
  if "shared.weight" not in tensors:
    raise ValueError(f"{os.fspath(root)!r} holds no shared.weight; it is not a T5ForConditionalGeneration checkpoint.")
  config = _resolve_head(tensors, t5_config_from_hf(hf_config), scales_decoder_output(hf_config))
  for name in _IGNORED:
    tensors.pop(name, None)
  return rename_tensors(tensors, _name_map(config), root, dtype), config


def rename_tensors(tensors: dict[str, np.ndarray], names: Mapping[str, tuple[str, bool]], source: epath.PathLike,
                   dtype: Any = np.float32) -> dict:
  """Our nested tree from HF tensors, by `names` (HF name -> (our '/'-joined path, transposed)); every tensor must
  have a name and every name a tensor. Consumes `tensors`."""
  missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
  if missing or unexpected:
    raise ValueError(f"Checkpoint {os.fspath(source)!r} does not match its config.json: missing {missing[:8]}, "
                     f"unexpected {unexpected[:8]} (counts {len(missing)}, {len(unexpected)}).")
  flat = {}
  for name, (ours, transpose) in names.items():
    array = tensors.pop(name)
    if isinstance(array, StoredArray):
      flat[ours] = (array.T if transpose else array).astype(dtype)
    else:
      flat[ours] = np.ascontiguousarray(array.T if transpose else array, dtype=dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def read_config(path: epath.PathLike) -> dict[str, Any]:
  """The `config.json` of a Hugging Face model dir, with a clear error when there is none."""
  root = epath.Path(path)
  if not (root / CONFIG_FILE).exists():
    raise FileNotFoundError(f"{os.fspath(root)!r} has no {CONFIG_FILE}; give the directory a Hugging Face "
                            "save_pretrained() wrote.")
  return json.loads((root / CONFIG_FILE).read_text())


def load_hf_variable(path: epath.PathLike, variable_path: str, dtype: Any = np.float32) -> np.ndarray:
  """One parameter (our '/'-joined path) of a Hugging Face T5 dir, as `load_hf_t5` would give it.

  Local files are opened lazily (`safetensors.safe_open`), so only that tensor is read: an initialiser that
  needs the embedding of an XXL checkpoint does not load the 44 GB model. The output head, which depends on
  whether `lm_head` is tied (a comparison of two whole tensors), and remote files take the full conversion.
  """
  root = epath.Path(path)
  inverse = {ours: (name, transpose)
             for name, (ours, transpose) in _name_map(t5_config_from_hf(json.loads(
                 (root / CONFIG_FILE).read_text()))).items()}
  if variable_path not in inverse or variable_path.startswith("decoder/logits_dense") or "://" in os.fspath(root):
    return formats.variable_at(load_hf_t5(root, dtype)[0], variable_path,
                               f"{variable_path!r} is not a parameter of the Hugging Face checkpoint "
                               f"{os.fspath(root)!r} (paths look like 'token_embedder/embedding' or "
                               "'encoder/layers_0/mlp/wo/kernel').")
  name, transpose = inverse[variable_path]
  shard = WEIGHTS_FILE
  if not (root / WEIGHTS_FILE).exists() and (root / INDEX_FILE).exists():
    shard = json.loads((root / INDEX_FILE).read_text())["weight_map"][name]
  _safetensors()  # the clear ImportError when the hf extra is missing
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(os.fspath(root / shard), framework="numpy") as f:
    array = f.get_tensor(name)
  return np.ascontiguousarray(array.T if transpose else array, dtype=dtype)


def save_hf_t5(params: Mapping[str, Any], config: T5Config, out_dir: epath.PathLike) -> epath.Path:
  """Write `config.json` + `model.safetensors` (float32) that `T5ForConditionalGeneration.from_pretrained` loads.

  `params` is our unrolled tree (boxed or not), without the `{'params': ...}` wrapper. Each file is written
  under a temporary name and then renamed, so a reader never sees half a file.
  """
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  flat = traverse_util.flatten_dict(meta.unbox(params), sep="/")
  names = _name_map(config)
  missing = sorted(ours for ours, _ in names.values() if ours not in flat)
  if missing:
    raise ValueError(f"params lack {missing[:8]} for this config ({len(missing)} in all); pass the unrolled "
                     "model tree (unstack scanned layers with models.scan_utils.unstack_layers).")
  tensors = {}
  for name, (ours, transpose) in names.items():
    array = np.asarray(flat[ours])
    tensors[name] = np.ascontiguousarray(array.T if transpose else array, dtype=np.float32)
  write_safetensors(out / WEIGHTS_FILE, tensors)
  write_json(out / CONFIG_FILE, hf_config_from_t5(config))
  return out


def _atomic_write(path: epath.Path, data: bytes) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(path)


def write_safetensors(path: epath.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Write a safetensors file as PyTorch-side tools expect it (`format: pt` metadata), atomically."""
  _atomic_write(epath.Path(path), _safetensors().save(dict(tensors), metadata={"format": "pt"}))


def write_json(path: epath.PathLike, value: Any) -> None:
  """Write indented JSON, atomically."""
  _atomic_write(epath.Path(path), (json.dumps(value, indent=2) + "\n").encode())
