"""Partitioning and shard-by-shard restore checks that need several devices, run as a script by test_partitioning.py.

`python multidevice_checks.py` runs the single-process checks on 8 simulated CPU devices;
`python multidevice_checks.py PROCESS_ID PORT` is one of two `jax.distributed` processes with 4 CPU devices each.
The last line of output is JSON: `{check name: "ok" or the failure's traceback}`.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before jax creates its CPU backend
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count="
                                      + ("4" if len(sys.argv) > 1 else "8")]).strip()

import contextlib
import functools
import itertools
import json
import math
import pathlib
import shutil
import tempfile
import traceback
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.models import layers
from prompt_tuning.models import t5 as t5_lib
from prompt_tuning.runtime import optim
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import state_init
from prompt_tuning.runtime import trainer
from prompt_tuning.runtime.checkpoints import hf, restore, t5x_native, zarr_store
from prompt_tuning.runtime.configs import RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel

# Parameter specs under the default (1, 1) rules, by the end of the parameter's path (T5X_COMPAT §2.4).
EXPECTED_SPECS = {
    "token_embedder/embedding": P("model", None),
    "query/kernel": P(None, "model"),
    "key/kernel": P(None, "model"),
    "value/kernel": P(None, "model"),
    "out/kernel": P("model", None),
    "wi_0/kernel": P(None, "model"),
    "wi_1/kernel": P(None, "model"),
    "wo/kernel": P("model", None),
    "scale": P(None),
    "rel_embedding": P("model", None),
    "logits_dense/kernel": P(None, "model"),
    "prompt/prompt": P(None, None),
}
ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0], [11, 12, 13, 1, 0, 0], [4, 1, 0, 0, 0, 0]] * 2, np.int32)
TGT = np.array([[3, 4, 1, 0], [6, 7, 8, 1], [2, 1, 0, 0], [5, 5, 5, 1]] * 2, np.int32)
DEC_IN = np.pad(TGT, ((0, 0), (1, 0)))[:, :-1]


def expected_spec(path: str) -> P:
  matches = [spec for suffix, spec in EXPECTED_SPECS.items() if path.endswith(suffix)]
  if len(matches) != 1:
    raise KeyError(f"no single expected spec for {path}")
  return matches[0]


def tiny_model() -> EncoderDecoder:
  """The tiny T5 with every sharded dimension divisible by 2, and a 3-token prompt."""
  cfg = get_config("tiny", dtype=jnp.float32, num_heads=2, head_dim=4, emb_dim=8, mlp_dim=16)
  return EncoderDecoder(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(length=3))))


def init_fn(model: EncoderDecoder) -> Callable[[jax.Array], dict]:
  return lambda rng: model.init(rng, ENC[:1], DEC_IN[:1], TGT[:1])


def flat(tree) -> dict[str, jax.Array]:
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(tree))
  return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def assert_raises(fragments: list[str], fn: Callable[[], object]) -> None:
  try:
    fn()
  except ValueError as e:
    missing = [f for f in fragments if f not in str(e)]
    assert not missing, f"error {e!r} does not mention {missing}"
    return
  raise AssertionError(f"no ValueError mentioning {fragments}")


# ------------------------------------------------------------------------------------------------------- checks
def check_mesh_shapes():
  assert jax.device_count() == 8, jax.devices()
  mesh = partitioning.get_mesh(num_partitions=2)
  assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 4, "model": 2}, mesh
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert dict(partitioning.Partitioner(num_partitions=8).mesh.shape) == {"data": 1, "model": 8}
  # On CPU a model-parallel submesh only contributes its size.
  sub = partitioning.get_mesh(num_partitions=None, model_parallel_submesh=(2, 1, 1, 2))
  assert dict(sub.shape) == {"data": 2, "model": 4}, sub


def check_mesh_errors():
  assert_raises(["num_partitions=3", "8 devices", "[1, 2, 4, 8]"], lambda: partitioning.get_mesh(3))
  assert_raises(["num_partitions=2", "model_parallel_submesh=(1, 1, 1, 2)"],
                lambda: partitioning.get_mesh(2, (1, 1, 1, 2)))
  assert_raises(["num_partitions=None", "model_parallel_submesh=None"], lambda: partitioning.get_mesh(None))


@functools.lru_cache(maxsize=None)
def initialized(seed: int = 0):
  """(model, partitioner, abstract variables, sharded variables, the same variables made on one device)."""
  model = tiny_model()
  partitioner = partitioning.Partitioner(num_partitions=2)
  abstract = jax.eval_shape(init_fn(model), jax.random.PRNGKey(seed))
  sharded = partitioner.initialize(init_fn(model), abstract, jax.random.PRNGKey(seed))
  reference = jax.jit(init_fn(model))(jax.random.PRNGKey(seed))  # one device, same XLA numerics
  return model, partitioner, abstract, sharded, reference


def check_initialize_sharded_and_equal():
  _, partitioner, _, variables, reference_variables = initialized()
  sharded, reference = flat(variables), flat(reference_variables)
  assert sharded.keys() == reference.keys() and any("prompt" in k for k in sharded)
  for path, value in sharded.items():
    want = NamedSharding(partitioner.mesh, expected_spec(path))
    assert value.sharding == want, (path, value.sharding, want)
    local = {s.data.shape for s in value.addressable_shards}
    split = tuple(n // (2 if ax == "model" else 1) for n, ax in zip(value.shape, expected_spec(path)))
    assert local == {split}, (path, local, split)  # each device holds only its shard
    np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[path]), err_msg=path)


def check_forward_matches_single_device():
  model, partitioner, abstract, variables, reference_variables = initialized()
  batch = partitioner.shard_batch({"enc": ENC, "dec_in": DEC_IN, "tgt": TGT})
  forward = partitioner.partition(lambda v, b: model.apply(v, b["enc"], b["dec_in"], b["tgt"]),
                                  in_shardings=(partitioner.params_shardings(abstract), partitioner.data_sharding),
                                  out_shardings=None)
  logits = forward(variables, batch)
  assert logits.sharding.mesh == partitioner.mesh
  want = jax.jit(model.apply)(reference_variables, ENC, DEC_IN, TGT)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-5)


def check_decoder_only_forward_matches_single_device():
  """A Llama-shaped decoder-only model with a prompt (rotary, 4 query heads sharing 2 key/value heads, SwiGLU)
  on the (4, 2) mesh: its kernels split over 'model' as the encoder-decoder's, prefix-LM logits as on one device."""
  from prompt_tuning.models.config import DecoderOnlyConfig  # pylint: disable=import-outside-toplevel
  from prompt_tuning.models.decoder_only import DecoderOnly  # pylint: disable=import-outside-toplevel
  cfg = DecoderOnlyConfig(vocab_size=32, emb_dim=8, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=16,
                          num_layers=2, position_embedding="rotary", scale_attention_logits=True,
                          mlp_activations=("silu", "linear"), dtype=jnp.float32)
  model = DecoderOnly(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(length=3))))
  causal = np.broadcast_to(np.arange(TGT.shape[1]) <= 1, TGT.shape).astype(np.int32)  # BOS + one input
  init = lambda rng: model.init(rng, DEC_IN[:1], TGT[:1], causal[:1])
  partitioner = partitioning.Partitioner(num_partitions=2)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  variables = partitioner.initialize(init, abstract, jax.random.PRNGKey(0))
  for path, value in flat(variables).items():
    assert value.sharding.spec == expected_spec(path), (path, value.sharding.spec)
  key_kernel = next(v for k, v in flat(variables).items() if k.endswith("layers_0/self_attention/key/kernel"))
  assert {s.data.shape for s in key_kernel.addressable_shards} == {(8, 4)}  # 2 key/value heads of 4, split in 2
  batch = partitioner.shard_batch({"dec_in": DEC_IN, "tgt": TGT, "causal": causal})
  forward = partitioner.partition(lambda v, b: model.apply(v, b["dec_in"], b["tgt"], b["causal"]),
                                  in_shardings=(partitioner.params_shardings(abstract), partitioner.data_sharding),
                                  out_shardings=None)
  want = jax.jit(model.apply)(jax.jit(init)(jax.random.PRNGKey(0)), DEC_IN, TGT, causal)
  np.testing.assert_allclose(np.asarray(forward(variables, batch)), np.asarray(want), rtol=1e-5, atol=1e-5)


def check_activation_constraints_apply():
  partitioner = partitioning.Partitioner(num_partitions=2)
  constrained = lambda x: nn.with_logical_constraint(x + 1.0, ("batch", "length", "vocab"))
  x = jnp.zeros((8, 3, 4))
  inside = partitioner.partition(constrained, None, None)(x)
  assert inside.sharding.spec == P("data", None, "model"), inside.sharding
  outside = jax.jit(constrained)(x)  # no mesh, no rules: the constraint is a no-op
  assert len(outside.sharding.device_set) == 1, outside.sharding


def check_shard_batch_and_layout():
  partitioner = partitioning.Partitioner(num_partitions=2)
  batch = partitioner.shard_batch({"tgt": TGT})
  assert batch["tgt"].sharding == partitioner.data_sharding and batch["tgt"].shape == TGT.shape
  assert {s.data.shape for s in batch["tgt"].addressable_shards} == {(2, TGT.shape[1])}
  np.testing.assert_array_equal(np.asarray(batch["tgt"]), TGT)
  layout = partitioner.get_data_layout(8)
  assert (layout.batch_size, layout.shard_id, layout.num_shards, layout.is_first_host_in_replica_set) == (
      8, 0, 1, True), layout


def check_batch_size_errors():
  partitioner = partitioning.Partitioner(num_partitions=2)
  partitioner.check_batch_size(12)
  assert_raises(["batch size 6", "4 data-parallel shards", "e.g. 8"], lambda: partitioner.check_batch_size(6))
  assert_raises(["batch size 6"], lambda: partitioner.shard_batch({"tgt": TGT[:6]}))
  assert_raises(["batch size 2"], lambda: partitioner.get_data_layout(2))


def check_indivisible_parameter_error():
  cfg = get_config("tiny", dtype=jnp.float32, mlp_dim=15)
  abstract = t5_lib.abstract_variables(cfg)
  assert_raises(["wi_0", "(4, 15)", "not divisible by 2"],
                lambda: partitioning.Partitioner(num_partitions=2).params_shardings(abstract))


def check_hybrid_mesh_splits_the_batch_over_replica_and_data():
  """T5X's multi-slice mesh: ('replica', 'data', 'model'); the batch goes over ('replica', 'data')."""
  model = tiny_model()
  partitioner = partitioning.Partitioner(ici_mesh_shape=(2, 2, 2), dcn_mesh_shape=(1, 1, 1))
  mesh = partitioner.mesh
  assert mesh.axis_names == ("replica", "data", "model"), mesh.axis_names
  assert dict(mesh.shape) == {"replica": 2, "data": 2, "model": 2}, mesh.shape
  assert dict(partitioner.logical_axis_rules)["batch"] == ("replica", "data")
  assert partitioner.data_partition_spec == P(("replica", "data")) and partitioner.num_data_shards == 4
  abstract = jax.eval_shape(init_fn(model), jax.random.PRNGKey(0))
  variables = partitioner.initialize(init_fn(model), abstract, jax.random.PRNGKey(0))
  embedding = next(v for k, v in flat(variables).items() if k.endswith("token_embedder/embedding"))
  assert embedding.sharding.spec == P("model", None), embedding.sharding
  batch = partitioner.shard_batch({"enc": ENC, "dec_in": DEC_IN, "tgt": TGT})
  assert {s.data.shape for s in batch["tgt"].addressable_shards} == {(2, TGT.shape[1])}
  forward = partitioner.partition(lambda v, b: model.apply(v, b["enc"], b["dec_in"], b["tgt"]),
                                  in_shardings=(partitioner.params_shardings(abstract), partitioner.data_sharding),
                                  out_shardings=None)
  want = jax.jit(model.apply)(jax.jit(init_fn(model))(jax.random.PRNGKey(0)), ENC, DEC_IN, TGT)
  np.testing.assert_allclose(np.asarray(forward(variables, batch)), np.asarray(want), rtol=1e-5, atol=1e-5)
  constrained = partitioner.partition(lambda x: nn.with_logical_constraint(x + 1.0, ("batch", "vocab")), None,
                                      None)(jnp.zeros((8, 4)))
  assert constrained.sharding.spec == P(("replica", "data"), "model"), constrained.sharding
  assert_raises(["batch size 6", "4 data-parallel shards"], lambda: partitioner.check_batch_size(6))


def check_hybrid_mesh_errors():
  assert_raises(["both ici_mesh_shape and dcn_mesh_shape", "dcn_mesh_shape=None"],
                lambda: partitioning.Partitioner(ici_mesh_shape=(2, 2, 2)))
  assert_raises(["covers 16 devices", "there are 8"],
                lambda: partitioning.get_mesh(ici_mesh_shape=(2, 2, 2), dcn_mesh_shape=(2, 1, 1)))
  assert_raises(["asks for 2 slices or processes", "1 process(es)"],
                lambda: partitioning.get_mesh(ici_mesh_shape=(1, 2, 2), dcn_mesh_shape=(2, 1, 1)))
  assert_raises(["ici_mesh_shape=(8,)", "(replica, data, model)"],
                lambda: partitioning.get_mesh(ici_mesh_shape=(8,), dcn_mesh_shape=(1,)))


# ------------------------------------------------------------- frozen weights restored shard by shard
RESTORE_SHAPES = {"encoder_input_tokens": (2, 6), "decoder_input_tokens": (2, 4)}


def restore_model():
  """A tiny T5 whose sharded dims divide by 8 (8 heads of 8, MLP 128, vocab 128), with a 3-token prompt; a shard
  of a kernel is at least 2 KiB, above the 1 KiB up to which Orbax keeps a value inside its OCDBT B-tree."""
  from prompt_tuning.runtime.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  cfg = get_config("tiny", dtype=jnp.float32, num_heads=8, head_dim=8, emb_dim=64, mlp_dim=128, vocab_size=128)
  return EncoderDecoderModel(EncoderDecoder(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(3)))))


@functools.lru_cache(maxsize=None)
def restore_setup(num_partitions: int):
  """(model, partitioner, random values for all its parameters, the prompt too (what the checkpoint holds),
  their shardings)."""
  model, partitioner = restore_model(), partitioning.Partitioner(num_partitions=num_partitions)
  partitioner.add_logical_axis_rules(model.family.logical_axis_rules)
  abstract, shardings = (flat(tree) for tree in _abstract_and_shardings(model, partitioner))
  rng = np.random.default_rng(num_partitions)
  values = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in abstract.items()}
  return model, partitioner, values, shardings


def save_sharded_t5x(model_dir: pathlib.Path, values, shardings, compressor: str | None = "gzip") -> pathlib.Path:
  """A T5X checkpoint chunked as T5X chunks it: one zarr chunk per device shard."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  chunks = {"target." + k.replace("/", "."): shardings[k].shard_shape(v.shape) for k, v in values.items()}
  out = t5x_native.save_t5x_checkpoint(str(model_dir), 3, traverse_util.unflatten_dict(values, sep="/"),
                                       compressor=compressor, chunk_shapes=chunks)
  return pathlib.Path(out)


def chunk_bytes_of_local_shards(ckpt: pathlib.Path, values, shardings) -> tuple[int, int]:
  """(bytes of the chunk files and .zarray files this process's devices need, bytes of all of them)."""
  local = total = 0
  for name, value in values.items():
    zdir = ckpt / ("target." + name.replace("/", "."))
    zarray = json.loads((zdir / ".zarray").read_text())
    wanted = {".zarray"} | {key[1:] for key in local_chunk_keys("", zarray, value.shape, shardings[name])}
    for f in zdir.iterdir():
      size = f.stat().st_size
      total += size
      local += size if f.name in wanted else 0
  return local, total


def restore_through_state_init(model, partitioner, path: str, dtype: str | None = "float32"):
  """The parameters as a training run builds them (`build_run_params`: frozen and trainable, here all restored)."""
  restore_cfg = RestoreCheckpointConfig(path=path, dtype=dtype)
  run = state_init.build_run_params(model, partitioner, RESTORE_SHAPES, restore_cfg, [".*/prompt/.*"],
                                    jax.random.PRNGKey(0))
  assert list(flat(run.trainable)) == ["encoder/prompt/prompt/prompt"], list(flat(run.trainable))
  return {**flat(run.frozen), **flat(run.trainable)}


def _abstract_and_shardings(model, partitioner):
  init = lambda rng: model.get_initial_variables(rng, RESTORE_SHAPES)["params"]
  boxed = jax.eval_shape(init, jax.random.PRNGKey(1))
  return nn.meta.unbox(boxed), partitioner.params_shardings(boxed)


def restore_sharded(model, partitioner, path: str, dtype: str | None = "float32",
                    keep_prompt: bool = False) -> dict[str, jax.Array]:
  """The parameters as `build_run_params` restores them (`restore_params` with the shardings); with
  `keep_prompt`, the prompt is not in the checkpoint and left out."""
  abstract, shardings = _abstract_and_shardings(model, partitioner)
  rules = ((r".*prompt.*", None),) if keep_prompt else ()
  merged = restore.restore_params(abstract, path, dtype=dtype, assignment_map=rules, shardings=shardings)[0]
  return {k: v for k, v in flat(merged).items() if not keep_prompt or "prompt" not in k}


def previous_path(model, partitioner, path: str, dtype: str | None = "float32") -> dict[str, jax.Array]:
  """What restoring did before shard-by-shard reads: whole host arrays, then each device's slice cut out."""
  abstract, shardings = (flat(tree) for tree in _abstract_and_shardings(model, partitioner))
  whole, _ = restore.load_params(path, dtype=dtype)
  return {k: state_init._place(v, shardings[k], abstract[k].dtype)  # pylint: disable=protected-access
          for k, v in flat(whole).items()}


def assert_bit_identical(got: dict[str, jax.Array], want: dict[str, object], shardings) -> None:
  """Same keys, shardings, dtypes and bits on every local device (`want`: whole numpy arrays or jax.Arrays)."""
  assert got.keys() == want.keys(), (sorted(got), sorted(want))
  for name, value in got.items():
    assert value.sharding == shardings[name], (name, value.sharding)
    expected = want[name]
    for shard in value.addressable_shards:
      if isinstance(expected, jax.Array):
        ref = np.asarray(next(s.data for s in expected.addressable_shards if s.device == shard.device))
      else:
        ref = np.asarray(expected)[shard.index]
      data = np.asarray(shard.data)
      assert ref.dtype == data.dtype and ref.shape == data.shape, (name, ref.dtype, data.dtype)
      assert np.array_equal(ref.view(np.uint8), data.view(np.uint8)), name


def recorded_region_reads(fn: Callable[[], object]) -> tuple[object, list[tuple[int, ...]]]:
  """fn()'s result and the shape of every zarr region read while it ran."""
  shapes, real = [], zarr_store.read_region

  def recording(store, index=()):
    value = real(store, index)
    shapes.append(value.shape)
    return value

  zarr_store.read_region = recording
  try:
    return fn(), shapes
  finally:
    zarr_store.read_region = real


def check_t5x_restore_reads_each_shard_once_on_4_way_model_parallelism():
  """8 devices, 4-way model parallel: every region read is one device shard, each distinct one read once (a
  replicated parameter once, not once per device), the bytes TensorStore read are exactly those chunk files, and
  the arrays equal what was saved, bit for bit (float32 and a bfloat16 restore dtype), as the previous path."""
  model, partitioner, values, shardings = restore_setup(4)
  assert dict(partitioner.mesh.shape) == {"data": 2, "model": 4}
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    tmp = pathlib.Path(scratch)
    ckpt = save_sharded_t5x(tmp / "pretrained", values, shardings)
    before = zarr_store.bytes_read()
    got, shapes = recorded_region_reads(lambda: restore_through_state_init(model, partitioner, str(ckpt)))
    read = zarr_store.bytes_read() - before
    assert_bit_identical(got, values, shardings)
    assert_bit_identical(got, previous_path(model, partitioner, str(ckpt)), shardings)
    want_shapes = sorted(shardings[k].shard_shape(v.shape) for k, v in values.items()
                         for _ in range(4 if "model" in shardings[k].spec else 1))
    assert sorted(shapes) == want_shapes, (sorted(shapes), want_shapes)
    local, total = chunk_bytes_of_local_shards(ckpt, values, shardings)
    assert read == local == total, (read, local, total)  # one process holds every shard: each chunk read once
    bf16 = restore_sharded(model, partitioner, str(ckpt), dtype="bfloat16")
    assert_bit_identical(bf16, {k: v.astype(jnp.bfloat16).astype(np.float32) for k, v in values.items()}, shardings)
    assert_bit_identical(bf16, previous_path(model, partitioner, str(ckpt), "bfloat16"), shardings)


def check_t5x_restore_of_bfloat16_zstd_checkpoint():
  """A bfloat16 checkpoint with zstd chunks: restored into float32 parameters exactly as the previous path."""
  model, partitioner, values, shardings = restore_setup(4)
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    tmp = pathlib.Path(scratch)
    from flax import traverse_util  # pylint: disable=import-outside-toplevel
    ckpt = t5x_native.save_t5x_checkpoint(str(tmp), 3, traverse_util.unflatten_dict(values, sep="/"),
                                          dtype="bfloat16", compressor="zstd")
    got = restore_sharded(model, partitioner, ckpt, dtype=None)
    assert_bit_identical(got, {k: v.astype(jnp.bfloat16).astype(np.float32) for k, v in values.items()}, shardings)
    assert_bit_identical(got, previous_path(model, partitioner, ckpt, None), shardings)


def local_region_bytes(values, shardings) -> int:
  """Bytes of the distinct regions this process's devices hold (a replicated parameter counted once)."""
  total = 0
  for name, value in values.items():
    regions = {tuple(s.indices(n)[:2] for s, n in zip(index, value.shape))
               for index in shardings[name].addressable_devices_indices_map(value.shape).values()}
    total += sum(value.dtype.itemsize * math.prod(stop - start for start, stop in r) for r in regions)
  return total


def ocdbt_layout(state_dir: pathlib.Path) -> tuple[int, dict[str, bytes], dict[str, int]]:
  """Of the OCDBT database in `state_dir`: the bytes of its manifest and B-tree (the files `manifest.ocdbt` and
  `d/*` beside the per-process folders), the values kept inside the B-tree (Orbax's zarr metadata, values up to
  1 KiB) and the stored length of every other value (in the per-process data files), by key."""
  base = ts.KvStore.open(zarr_store.kvstore_spec(str(state_dir))).result()
  root = ts.ocdbt.dump(base).result()["versions"][-1]
  node = ts.ocdbt.dump(base, root["root"]["location"]).result()
  assert root["root_height"] == 0 == node["height"], root  # one B-tree node
  inline = {e["key"].decode(): e["inline_value"] for e in node["entries"] if "inline_value" in e}
  indirect = {e["key"].decode(): int(e["indirect_value"].rsplit(":", 1)[1])
              for e in node["entries"] if "indirect_value" in e}
  metadata = sum(f.stat().st_size for f in [state_dir / "manifest.ocdbt", *(state_dir / "d").iterdir()])
  assert metadata == (state_dir / "manifest.ocdbt").stat().st_size + root["root"]["statistics"]["num_tree_bytes"]
  return metadata, inline, indirect


def local_chunk_keys(name: str, zarray: dict, shape: tuple[int, ...], sharding) -> set[str]:
  """The zarr chunk keys (`name/i.j`) the regions of this process's devices touch."""
  chunks = zarray["chunks"] or [1]
  keys = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    ranges = [range(s.indices(n)[0] // c, -(-s.indices(n)[1] // c)) for s, n, c in zip(index, shape, chunks)]
    keys |= {f"{name}/" + ".".join(map(str, i)) for i in itertools.product(*ranges)} if ranges else {f"{name}/0"}
  return keys


def save_orbax_run(model_dir: pathlib.Path, values, shardings) -> pathlib.Path:
  """Our run checkpoint (`RunCheckpointer`, step 3) of `values` as a model-tuning run holds them: global arrays
  with their shardings, each process writing its shards. Returns the `checkpoint_3` dir."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer  # pylint: disable=import-outside-toplevel
  placed = {k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index])
            for k, v in values.items()}
  run = RunCheckpointer(str(model_dir))
  run.save(3, traverse_util.unflatten_dict(placed, sep="/"), {}, 0)
  run.wait()
  run.close()
  return model_dir / "checkpoint_3"


def assert_orbax_restore_reads_local_chunks(model_dir: pathlib.Path, num_partitions: int) -> None:
  """Our Orbax run, saved and restored with the shardings of `restore_setup(num_partitions)`: the values as saved
  and as Orbax's own restore gives them, bit for bit, and TensorStore's bytes read exactly the OCDBT manifest and
  B-tree (once) plus the stored chunks this process's regions touch, at most its share of the arrays' bytes
  (and, on several processes, less than all the chunks)."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer  # pylint: disable=import-outside-toplevel
  model, partitioner, values, shardings = restore_setup(num_partitions)
  ckpt = save_orbax_run(model_dir, values, shardings)
  metadata, inline, indirect = ocdbt_layout(ckpt / "state")
  local = set().union(*(local_chunk_keys("target." + k.replace("/", "."), json.loads(
      inline["target." + k.replace("/", ".") + "/.zarray"]), v.shape, shardings[k]) for k, v in values.items()))
  assert local <= set(inline) | set(indirect), sorted(local - set(inline) - set(indirect))[:4]
  assert len(indirect) > len(values), indirect  # the kernels' chunks are stored outside the B-tree
  before = zarr_store.bytes_read()
  got = restore_sharded(model, partitioner, str(ckpt))
  read = zarr_store.bytes_read() - before
  assert_bit_identical(got, values, shardings)
  abstract = traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in values.items()}, sep="/")
  run = RunCheckpointer(str(model_dir))
  assert_bit_identical(got, flat(run.restore(abstract, {}, 3)[0]), shardings)  # Orbax's own sharded restore
  run.close()
  local_stored = sum(indirect.get(key, 0) for key in local)
  share = local_region_bytes(values, shardings)
  assert read == metadata + local_stored, (read, metadata, local_stored)
  assert local_stored <= share, (local_stored, share)  # zstd chunks: at most the raw bytes of the shards
  if jax.process_count() > 1:
    assert read < metadata + sum(indirect.values()), (read, sum(indirect.values()))


def check_orbax_restore_reads_each_chunk_once():
  """8 devices (2 data replicas x 4-way model parallel): every stored chunk read once, not once per replica."""
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    assert_orbax_restore_reads_local_chunks(pathlib.Path(scratch) / "orbax", 4)


def assert_hf_restore_reads_local_regions(hf_dir: pathlib.Path, num_partitions: int) -> None:
  """Hugging Face safetensors restored with the shardings of `restore_setup(num_partitions)`: the values as saved
  and as the previous path gives them, and the bytes `pread` returned exactly the header, the first row of each
  of the two embedding tables (compared to tell a tied head apart) and the regions of this process's devices,
  each once."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  model, partitioner, values, shardings = restore_setup(num_partitions)
  hf.save_hf_t5(traverse_util.unflatten_dict(values, sep="/"), model.module.config, hf_dir)
  before = hf.bytes_read()
  got = restore_sharded(model, partitioner, str(hf_dir), keep_prompt=True)
  read = hf.bytes_read() - before
  saved = {k: v for k, v in values.items() if "prompt" not in k}
  assert_bit_identical(got, saved, shardings)
  assert_bit_identical(got, previous_path(model, partitioner, str(hf_dir)), shardings)
  header = 8 + int.from_bytes((hf_dir / hf.WEIGHTS_FILE).read_bytes()[:8], "little")
  first_rows = 2 * values["token_embedder/embedding"][:1].nbytes  # shared.weight and lm_head.weight: they differ
  assert read == header + first_rows + local_region_bytes(saved, shardings), (read, header, first_rows)


def check_hf_restore_reads_each_region_once():
  """8 devices (2 data replicas x 4-way model parallel): each distinct region read once."""
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    assert_hf_restore_reads_local_regions(pathlib.Path(scratch) / "hf", 4)


# ------------------------------------------------------------------------------- two processes x 4 devices
GLOBAL_BATCH = np.arange(24, dtype=np.int32).reshape(8, 3)


def multihost_check_layout_and_shard_batch():
  pid = jax.process_index()
  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
  # 'model' within a host: each host feeds its own half of the batch. 'model' across hosts: both feed it all.
  for num_partitions, want in ((2, (2, pid, True)), (8, (1, 0, pid == 0))):
    partitioner = partitioning.Partitioner(num_partitions=num_partitions)
    layout = partitioner.get_data_layout(8)
    assert (layout.num_shards, layout.shard_id, layout.is_first_host_in_replica_set) == want, (num_partitions,
                                                                                              layout)
    rows = 8 // layout.num_shards
    batch = partitioner.shard_batch({"x": GLOBAL_BATCH[layout.shard_id * rows:(layout.shard_id + 1) * rows]})
    assert batch["x"].shape == GLOBAL_BATCH.shape, batch["x"].shape
    weighted = partitioner.partition(lambda b: jnp.sum(b["x"] * jnp.arange(1, 9)[:, None]), None, P())(batch)
    want_sum = int(np.sum(GLOBAL_BATCH * np.arange(1, 9)[:, None]))
    assert int(weighted.addressable_data(0)) == want_sum, (num_partitions, weighted, want_sum)


def multihost_check_hybrid_mesh_puts_one_process_per_replica():
  """dcn across processes (T5X multi-slice, processes standing in for slices): each host feeds its replica."""
  pid = jax.process_index()
  partitioner = partitioning.Partitioner(ici_mesh_shape=(1, 2, 2), dcn_mesh_shape=(2, 1, 1))
  mesh = partitioner.mesh
  assert dict(mesh.shape) == {"replica": 2, "data": 2, "model": 2}, mesh.shape
  assert [{d.process_index for d in mesh.devices[r].flat} for r in range(2)] == [{0}, {1}]
  layout = partitioner.get_data_layout(8)
  assert (layout.num_shards, layout.shard_id, layout.is_first_host_in_replica_set) == (2, pid, True), layout
  batch = partitioner.shard_batch({"x": GLOBAL_BATCH[pid * 4:(pid + 1) * 4]})
  assert batch["x"].shape == GLOBAL_BATCH.shape, batch["x"].shape
  weighted = partitioner.partition(lambda b: jnp.sum(b["x"] * jnp.arange(1, 9)[:, None]), None, P())(batch)
  assert int(weighted.addressable_data(0)) == int(np.sum(GLOBAL_BATCH * np.arange(1, 9)[:, None])), weighted


def multihost_check_initialize():
  layer = layers.Projection(6, ("embed", "mlp"))
  init = lambda rng: layer.init(rng, jnp.ones((1, 4)))
  partitioner = partitioning.Partitioner(num_partitions=2)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(2))
  kernel = nn.meta.unbox(partitioner.initialize(init, abstract, jax.random.PRNGKey(2)))["params"]["kernel"]
  assert kernel.sharding == NamedSharding(partitioner.mesh, P(None, "model")), kernel.sharding
  reference = np.asarray(jax.jit(init)(jax.random.PRNGKey(2))["params"]["kernel"].value)
  assert len(kernel.addressable_shards) == 4
  for shard in kernel.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), reference[shard.index])


def multihost_check_t5x_restore_reads_only_this_process_shards():
  """Two processes, the 'model' axis across both (8-way): each process reads from storage exactly the chunk files
  of its own shards (half of each sharded parameter) plus the replicated parameters, and gets the values that
  were saved, bit for bit, as the previous whole-array path gives them."""
  model, partitioner, values, shardings = restore_setup(8)
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    tmp = pathlib.Path(scratch)  # each process writes its own copy (same values)
    ckpt = save_sharded_t5x(tmp / "pretrained", values, shardings, compressor=None)  # chunk bytes = shard bytes
    before = zarr_store.bytes_read()
    got = restore_through_state_init(model, partitioner, str(ckpt))
    read = zarr_store.bytes_read() - before
    assert_bit_identical(got, values, shardings)
    local, total = chunk_bytes_of_local_shards(ckpt, values, shardings)
    metadata = sum((ckpt / ("target." + k.replace("/", ".")) / ".zarray").stat().st_size for k in values)
    sharded = sum(v.nbytes for k, v in values.items() if "model" in shardings[k].spec)
    replicated = sum(v.nbytes for k, v in values.items() if "model" not in shardings[k].spec)
    assert read == local == sharded // 2 + replicated + metadata, (read, local, sharded, replicated, metadata)
    assert read < total - sharded // 3, (read, total)
    assert_bit_identical(got, previous_path(model, partitioner, str(ckpt)), shardings)


@contextlib.contextmanager
def shared_tempdir() -> Iterator[pathlib.Path]:
  """A temporary dir every process sees: process 0 makes it, and removes it once all processes are done."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  made = tempfile.mkdtemp() if jax.process_index() == 0 else ""
  path = bytes(multihost_utils.broadcast_one_to_all(np.frombuffer(made.encode().ljust(1024, b"\0"), np.uint8)))
  try:
    yield pathlib.Path(path.rstrip(b"\0").decode())
  finally:
    multihost_utils.sync_global_devices("shared_tempdir")
    if made:
      shutil.rmtree(made, ignore_errors=True)


def multihost_check_orbax_restore_reads_only_this_process_chunks():
  """Two processes write one Orbax run (each its shards, into a shared dir) and each restores it with the 'model'
  axis across both: half of each sharded parameter's chunks, the replicated ones whole, and the OCDBT B-tree."""
  with shared_tempdir() as shared:
    assert_orbax_restore_reads_local_chunks(shared / "orbax", 8)


def multihost_check_hf_restore_reads_only_this_process_regions():
  """Each process writes its own copy of a Hugging Face checkpoint and restores it with the 'model' axis across
  both processes: half of each sharded tensor's bytes, the replicated ones whole."""
  with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
    assert_hf_restore_reads_local_regions(pathlib.Path(scratch) / "hf", 8)


def _train_three_steps(devices, **mesh) -> tuple[list[float], np.ndarray]:
  """Three prompt-tuning train steps of the tiny model (a 4-token prompt) on `devices`: losses and the prompt."""
  model = EncoderDecoderModel(EncoderDecoder(
      get_config("tiny", dtype=jnp.float32, vocab_size=128, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16),
      PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(4)))))
  partitioner = partitioning.Partitioner(devices=devices, **mesh)
  batch, enc_len, dec_len = 8, 6, 4
  shapes = {"encoder_input_tokens": (batch, enc_len), "decoder_input_tokens": (batch, dec_len)}
  run = state_init.build_run_params(model, partitioner, shapes, None, [".*/prompt/.*"], jax.random.PRNGKey(0))
  tx = optim.adafactor(0.3)
  state = trainer.init_train_state(run.trainable, tx)
  step = jax.jit(trainer.make_train_step(model, tx, dropout=False), donate_argnums=(0,))
  losses = []
  with partitioner.activation_rules_context():
    for i in range(3):
      rng = np.random.default_rng(i)
      enc = rng.integers(2, 50, (batch, enc_len)).astype(np.int32)
      enc[:, -2:] = 0
      tgt = rng.integers(2, 50, (batch, dec_len)).astype(np.int32)
      tgt[::2, -1] = 0
      features = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
                  "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
                  "decoder_loss_weights": (tgt > 0).astype(np.float32)}
      state, metrics = step(state, run.frozen, partitioner.shard_batch(features), jax.random.PRNGKey(1))
      losses.append(float(metrics["loss"]))
  return losses, np.asarray(state.params["encoder"]["prompt"]["prompt"]["prompt"])


def check_train_step_on_8_devices_matches_one_device():
  """The train step on a (data 4 x model 2) mesh and on a multi-slice (replica, data, model) mesh, against one
  device: the same losses and the same prompt after three steps."""
  single_losses, single_prompt = _train_three_steps(jax.devices()[:1], num_partitions=1)
  for layout, mesh in (("sharded", {"num_partitions": 2}),
                       ("multi_slice", {"ici_mesh_shape": (2, 2, 2), "dcn_mesh_shape": (1, 1, 1)})):
    losses, prompt = _train_three_steps(jax.devices(), **mesh)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5, err_msg=layout)
    # Each Adafactor step at LR 0.3 moves an entry by about 0.3; the sharded reductions' float32 order differs
    # from one device's, which three steps amplify to ~1e-5 (seen 1.3e-5 on AMD EPYC): a wrong layout is far off.
    np.testing.assert_allclose(prompt, single_prompt, rtol=1e-4, atol=1e-4, err_msg=layout)


def _checks(prefix: str) -> dict[str, Callable[[], None]]:
  return {name[len(prefix):]: fn for name, fn in globals().items() if name.startswith(prefix)}


CHECKS = _checks("check_")
MULTIHOST_CHECKS = _checks("multihost_check_")


def main(argv: list[str]) -> None:
  checks = CHECKS
  if argv:
    process_id, port = map(int, argv)
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    checks = MULTIHOST_CHECKS
  results = {}
  for name, fn in checks.items():
    try:
      fn()
      results[name] = "ok"
    except Exception:  # pylint: disable=broad-except
      results[name] = traceback.format_exc()
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
