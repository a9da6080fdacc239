"""T5X native checkpoints: the real tiny checkpoint, round trips, hand-made layouts and errors."""
from __future__ import annotations

import json
import pathlib

from flax import serialization
import ml_dtypes
import msgpack
import numpy as np
import pytest

from prompt_tuning.runtime import checkpoints
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints import zarr_store


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}/"))
    return out
  return {prefix[:-1]: tree}


def _t5_1_1_shapes(d=4, heads=2, head_dim=2, mlp=8, layers=2, buckets=4, vocab=32128):
  """The flaxformer T5 1.1 param tree of T5X_COMPAT §2.1 as {path: shape}."""
  hk = heads * head_dim

  def attention(prefix):
    return {**{f"{prefix}/{n}/kernel": (d, hk) for n in ("query", "key", "value")}, f"{prefix}/out/kernel": (hk, d)}

  def mlp_block(prefix):
    return {f"{prefix}/mlp/wi_0/kernel": (d, mlp), f"{prefix}/mlp/wi_1/kernel": (d, mlp),
            f"{prefix}/mlp/wo/kernel": (mlp, d)}

  shapes = {
      "token_embedder/embedding": (vocab, d), "decoder/logits_dense/kernel": (d, vocab),
      "encoder/encoder_norm/scale": (d,), "decoder/decoder_norm/scale": (d,),
      "encoder/relpos_bias/rel_embedding": (heads, buckets), "decoder/relpos_bias/rel_embedding": (heads, buckets),
  }
  for i in range(layers):
    enc, dec = f"encoder/layers_{i}", f"decoder/layers_{i}"
    shapes.update({f"{enc}/pre_attention_layer_norm/scale": (d,), f"{enc}/pre_mlp_layer_norm/scale": (d,)})
    shapes.update({**attention(f"{enc}/attention"), **mlp_block(enc)})
    shapes.update({f"{dec}/{n}/scale": (d,) for n in (
        "pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm")})
    shapes.update({**attention(f"{dec}/self_attention"), **attention(f"{dec}/encoder_decoder_attention")})
    shapes.update(mlp_block(dec))
  return shapes


# ------------------------------------------------------------------------------------------ the real checkpoint


@pytest.fixture(scope="module")
def real(tiny_t5x_checkpoint):
  return checkpoints.load_t5x_checkpoint(str(tiny_t5x_checkpoint))


def test_real_checkpoint_step_and_embedding(real, tiny_t5x_checkpoint):
  step = real["state"]["step"]
  assert step.dtype == np.int32 and step.shape == () and int(step) == 3
  expected = np.load(tiny_t5x_checkpoint.parent / "token_embedder_embedding_32128x4.npy")
  np.testing.assert_array_equal(real["target"]["token_embedder"]["embedding"], expected)


def test_real_checkpoint_has_the_t5_1_1_tree(real):
  shapes = {path: value.shape for path, value in _flatten(real["target"]).items()}
  assert shapes == _t5_1_1_shapes()
  assert all(value.dtype == np.float32 for value in _flatten(real["target"]).values())


def test_real_checkpoint_adafactor_slots(real):
  params = _flatten(real["target"])
  slots = _flatten(real["state"]["param_states"])
  assert set(slots) == {f"{path}/{slot}" for path in params for slot in ("m", "v", "v_col", "v_row")}
  for path, param in params.items():
    assert slots[f"{path}/v"].shape == param.shape
    for slot in ("m", "v_col", "v_row"):
      np.testing.assert_array_equal(slots[f"{path}/{slot}"], np.zeros((1,), np.float32))


def test_real_checkpoint_load_variable_and_model_dir(tiny_t5x_checkpoint, real):
  model_dir = tiny_t5x_checkpoint.parent
  embedding = real["target"]["token_embedder"]["embedding"]
  for name in ("token_embedder/embedding", "target/token_embedder/embedding"):
    np.testing.assert_array_equal(checkpoints.load_variable(str(model_dir), name), embedding)
  assert int(checkpoints.load_variable(str(tiny_t5x_checkpoint / "checkpoint"), "state/step")) == 3
  assert checkpoints.all_steps(model_dir) == [3] and checkpoints.latest_step(model_dir) == 3
  kind, location = checkpoints.resolve_checkpoint(model_dir)
  assert (kind, pathlib.Path(location)) == ("t5x", tiny_t5x_checkpoint / "checkpoint")
  params = checkpoints.load_t5x_params(str(model_dir), step=3, restore_dtype="bfloat16")
  assert params["decoder"]["logits_dense"]["kernel"].dtype == ml_dtypes.bfloat16
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="checkpoint_4"):
    checkpoints.load_t5x_params(str(model_dir), step=4)


def test_real_checkpoint_restores_shard_by_shard_exactly(tiny_t5x_checkpoint, real):
  """The path a run takes (`restore_params` with shardings): global arrays equal to the whole-array load."""
  import jax
  from flax import traverse_util
  from prompt_tuning.runtime.checkpoints import restore
  target = real["target"]
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  placed, step = restore.restore_params(abstract, str(tiny_t5x_checkpoint),
                                        shardings=jax.tree_util.tree_map(lambda _: sharding, target))
  assert step == 3
  flat_placed, flat_real = (traverse_util.flatten_dict(t, sep="/") for t in (placed, target))
  assert flat_placed.keys() == flat_real.keys()
  in_zarr = {name for name in flat_real if (tiny_t5x_checkpoint / f"target.{name.replace('/', '.')}").is_dir()}
  assert len(in_zarr) == 38 and len(flat_real) > 38  # kernels and the embedding; norms and biases are inline
  for name, value in flat_placed.items():
    if name in in_zarr:
      assert isinstance(value, jax.Array) and value.sharding == sharding, name
    else:  # a small inline msgpack array: state_init places it
      assert isinstance(value, np.ndarray), name
    np.testing.assert_array_equal(np.asarray(value), flat_real[name], err_msg=name)


# ------------------------------------------------------------------------------------------ round trips


def _params(rng):
  return {
      "encoder": {"layers_0": {"attention": {"query": {"kernel": rng.normal(size=(4, 6)).astype(np.float32)}},
                               "pre_attention_layer_norm": {"scale": rng.normal(size=(4,)).astype(np.float32)}}},
      "token_embedder": {"embedding": rng.normal(size=(10, 4)).astype(np.float32)},
  }


def _adafactor_states(params):
  return {k: _adafactor_states(v) if isinstance(v, dict) else {
      "m": np.zeros((1,), np.float32), "v": np.abs(v) + 1, "v_col": np.zeros((1,), np.float32),
      "v_row": np.zeros((1,), np.float32)} for k, v in params.items()}


def _msgpack_tree(ckpt_dir):
  return msgpack.unpackb((pathlib.Path(ckpt_dir) / "checkpoint").read_bytes(), raw=False,
                         ext_hook=lambda code, data: ("ext", code), strict_map_key=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("compressor", ["gzip", "zstd"])
def test_round_trip(tmp_path, dtype, compressor):
  params = _params(np.random.default_rng(0))
  states = _adafactor_states(params)
  out = checkpoints.save_t5x_checkpoint(str(tmp_path), 7, params, states, dtype=dtype, compressor=compressor)
  assert pathlib.Path(out) == tmp_path / "checkpoint_7"
  loaded = checkpoints.load_t5x_checkpoint(str(tmp_path))
  assert int(loaded["state"]["step"]) == 7 and loaded["state"]["step"].dtype == np.int32
  want = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)
  for path, value in _flatten(params).items():
    got = _flatten(loaded["target"])[path]
    assert got.dtype == want
    np.testing.assert_array_equal(got, value.astype(want))
  for path, value in _flatten(states).items():  # optimizer state is never cast
    np.testing.assert_array_equal(_flatten(loaded["state"]["param_states"])[path], value)
    assert _flatten(loaded["state"]["param_states"])[path].dtype == np.float32

  zarr_name = "target.token_embedder.embedding"
  zarray = json.loads((tmp_path / "checkpoint_7" / zarr_name / ".zarray").read_text())
  assert zarray["dtype"] == ("bfloat16" if dtype == "bfloat16" else "<f4")
  assert zarray["compressor"]["id"] == compressor and zarray["shape"] == [10, 4]
  raw = _msgpack_tree(out)
  assert raw["version"] == 3 and raw["optimizer"]["state"]["step"] == ("ext", 1)
  spec = raw["optimizer"]["target"]["token_embedder"]["embedding"]
  assert spec["kvstore"] == {"driver": "file", "path": f"{zarr_name}/"} and spec["dtype"] == dtype
  assert spec["metadata"]["shape"] == [10, 4] and spec["driver"] == "zarr"
  assert (tmp_path / "checkpoint_7" / "state.param_states.token_embedder.embedding.v" / ".zarray").exists()


def test_inline_names_and_none_states(tmp_path):
  params = _params(np.random.default_rng(1))
  out = checkpoints.save_t5x_checkpoint(str(tmp_path), 1, params, inline_names=lambda name: name.endswith(".scale"))
  raw = _msgpack_tree(out)["optimizer"]
  assert raw["target"]["encoder"]["layers_0"]["pre_attention_layer_norm"]["scale"] == ("ext", 1)
  assert "driver" in raw["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert sorted(p.name for p in pathlib.Path(out).iterdir()) == [
      "checkpoint", "target.encoder.layers_0.attention.query.kernel", "target.token_embedder.embedding"]
  loaded = checkpoints.load_t5x_checkpoint(out)
  assert set(_flatten(loaded["state"]["param_states"])) == set(_flatten(params))
  assert all(v is None for v in _flatten(loaded["state"]["param_states"]).values())
  for path, value in _flatten(params).items():
    np.testing.assert_array_equal(_flatten(loaded["target"])[path], value)


def test_chunked_msgpack_array(tmp_path, monkeypatch):
  monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 64)
  big = np.arange(50, dtype=np.float32).reshape(5, 10)
  out = checkpoints.save_t5x_checkpoint(str(tmp_path), 2, {"w": big}, inline_names=lambda name: True)
  assert _msgpack_tree(out)["optimizer"]["target"]["w"]["__msgpack_chunked_array__"] is True
  np.testing.assert_array_equal(checkpoints.load_t5x_params(out)["w"], big)


def test_restore_dtype_casts_only_target(tmp_path):
  params = {"w": np.ones((3, 2), np.float32), "ids": np.arange(3, dtype=np.int32)}
  checkpoints.save_t5x_checkpoint(str(tmp_path), 1, params, {"w": {"v": np.ones((3, 2), np.float32)}, "ids": None})
  loaded = checkpoints.load_t5x_checkpoint(str(tmp_path), restore_dtype="bfloat16")
  assert loaded["target"]["w"].dtype == ml_dtypes.bfloat16
  assert loaded["target"]["ids"].dtype == np.int32
  assert loaded["state"]["param_states"]["w"]["v"].dtype == np.float32
  assert loaded["state"]["step"].dtype == np.int32
  assert checkpoints.load_variable(str(tmp_path), "w", restore_dtype="float16").dtype == np.float16


def test_params_and_variable_read_only_what_they_need(tmp_path, monkeypatch):
  params = _params(np.random.default_rng(2))
  checkpoints.save_t5x_checkpoint(str(tmp_path), 1, params, _adafactor_states(params))
  reads = []
  real_open = zarr_store.open_array
  monkeypatch.setattr(zarr_store, "open_array", lambda path: reads.append(pathlib.Path(path).name) or real_open(path))
  checkpoints.load_t5x_params(str(tmp_path))
  assert sorted(reads) == sorted(f"target.{p.replace('/', '.')}" for p in _flatten(params))
  reads.clear()
  value = checkpoints.load_variable(str(tmp_path), "token_embedder/embedding")
  assert reads == ["target.token_embedder.embedding"]
  np.testing.assert_array_equal(value, params["token_embedder"]["embedding"])


def test_keep_atomic_and_skip_existing(tmp_path, monkeypatch):
  for step in (1, 2, 3):
    checkpoints.save_t5x_checkpoint(str(tmp_path), step, {"w": np.full((2,), step, np.float32)}, keep=2)
  assert checkpoints.all_steps(tmp_path) == [2, 3]
  (tmp_path / "checkpoint_2" / "PINNED").touch()
  checkpoints.save_t5x_checkpoint(str(tmp_path), 4, {"w": np.zeros((2,), np.float32)}, keep=1)
  assert checkpoints.all_steps(tmp_path) == [2, 4]
  # An existing step is never overwritten.
  checkpoints.save_t5x_checkpoint(str(tmp_path), 4, {"w": np.ones((2,), np.float32)})
  np.testing.assert_array_equal(checkpoints.load_t5x_params(str(tmp_path))["w"], np.zeros((2,)))

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(zarr_store, "write_array", fail)
  with pytest.raises(OSError, match="disk full"):
    checkpoints.save_t5x_checkpoint(str(tmp_path), 5, {"w": np.ones((2,), np.float32)})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2", "checkpoint_4"]


def test_tensorstore_reads_what_we_write(tmp_path):
  ts = pytest.importorskip("tensorstore")
  params = {"a": np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)}
  out = checkpoints.save_t5x_checkpoint(str(tmp_path), 1, params, dtype="bfloat16", compressor="zstd")
  spec = _msgpack_tree(out)["optimizer"]["target"]["a"]
  spec["kvstore"]["path"] = checkpoints.resolve_tensorstore_path(spec, out)
  got = ts.open(spec, open=True).result().read().result()
  np.testing.assert_array_equal(got, params["a"].astype(ml_dtypes.bfloat16))


# ------------------------------------------------------------------------------------------ zarr details


def test_zarr_padded_edges_missing_chunks_and_fill(tmp_path):
  x = np.arange(15, dtype="<i4").reshape(5, 3)
  meta = zarr_store.write_array(str(tmp_path / "a"), x, compressor=None, chunks=(2, 2))
  assert meta["chunks"] == [2, 2] and len(list((tmp_path / "a").iterdir())) == 1 + 6
  np.testing.assert_array_equal(zarr_store.read_array(str(tmp_path / "a")), x)
  (tmp_path / "a" / "2.1").unlink()  # the padded corner chunk
  np.testing.assert_array_equal(zarr_store.read_array(str(tmp_path / "a"))[4, 2], 0)
  y = np.linspace(0, 1, 7, dtype="<f2")
  zarr_store.write_array(str(tmp_path / "h"), y, chunks=(3,))
  zarray = json.loads((tmp_path / "h" / ".zarray").read_text())
  (tmp_path / "h" / ".zarray").write_text(json.dumps({**zarray, "fill_value": "NaN"}))
  (tmp_path / "h" / "1").unlink()
  got = zarr_store.read_array(str(tmp_path / "h"))
  assert got.dtype == np.float16 and np.isnan(got[3:6]).all()
  np.testing.assert_array_equal(got[[0, 1, 2, 6]], y[[0, 1, 2, 6]])


def test_zarr_fortran_order_big_endian_and_scalar(tmp_path):
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  (tmp_path / "f").mkdir()
  (tmp_path / "f" / ".zarray").write_text(json.dumps({
      "chunks": [2, 3], "compressor": None, "dtype": ">f4", "fill_value": None, "filters": None, "order": "F",
      "shape": [2, 3], "zarr_format": 2}))
  (tmp_path / "f" / "0.0").write_bytes(x.astype(">f4").tobytes(order="F"))
  got = zarr_store.read_array(str(tmp_path / "f"))
  np.testing.assert_array_equal(got, x)
  assert got.dtype == np.float32
  zarr_store.write_array(str(tmp_path / "s"), np.asarray(7, np.int32), compressor="zstd")
  assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".zarray", "0"]
  assert zarr_store.read_array(str(tmp_path / "s"))[()] == 7


def test_zarr_region_reads_only_the_chunks_it_touches(tmp_path):
  """bfloat16, F order, zstd, as TensorStore writes them: a region read costs exactly its chunks' files."""
  import tensorstore as ts
  x = np.arange(15, dtype=np.float32).reshape(5, 3).astype(ml_dtypes.bfloat16)
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "b")},
                   "metadata": {"shape": [5, 3], "chunks": [2, 2], "dtype": "bfloat16", "order": "F",
                                "compressor": {"id": "zstd", "level": 3}}}, create=True).result()
  store.write(x).result()
  opened = zarr_store.open_array(str(tmp_path / "b"))
  before = zarr_store.bytes_read()
  got = zarr_store.read_region(opened, (slice(2, 4), slice(0, 3)))
  assert zarr_store.bytes_read() - before == sum((tmp_path / "b" / k).stat().st_size for k in ("1.0", "1.1"))
  assert got.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got, x[2:4])
  with pytest.raises(FileNotFoundError, match="incomplete"):
    zarr_store.open_array(str(tmp_path / "missing"))


@pytest.mark.parametrize("location, expected", [
    ("gs://bucket/run/checkpoint_5/target.w",
     {"driver": "gcs", "bucket": "bucket", "path": "run/checkpoint_5/target.w/"}),
    ("/data/target.w", {"driver": "file", "path": "/data/target.w/"}),
])
def test_zarr_kvstore_spec(location, expected):
  assert zarr_store.kvstore_spec(location) == expected
  with pytest.raises(ValueError, match="s3://b/w"):
    zarr_store.kvstore_spec("s3://b/w")


def test_choose_chunk_shape():
  assert zarr_store.choose_chunk_shape([32128, 4], 10**9) == [32128, 4]
  assert zarr_store.choose_chunk_shape([32128, 4], 4096 * 4) == [4016, 4]
  assert zarr_store.choose_chunk_shape([], 1) == []
  chunks = zarr_store.choose_chunk_shape([12, 10], 20)
  assert np.prod(chunks) <= 20 and 12 % chunks[0] == 0 and 10 % chunks[1] == 0


# ------------------------------------------------------------------------------------------ hand-made layouts


def _write_checkpoint(ckpt_dir: pathlib.Path, contents) -> pathlib.Path:
  ckpt_dir.mkdir(parents=True, exist_ok=True)
  (ckpt_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  return ckpt_dir


def test_spec_shapes_drivers_and_inline_ext_types(tmp_path):
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  ckpt = tmp_path / "checkpoint_9"
  for name in ("old", "new", "very_old", "gcs"):
    zarr_store.write_array(str(ckpt / f"target.{name}"), x, chunks=(2, 4))
  meta = {"chunks": [2, 4], "compressor": {"id": "gzip", "level": 1}, "shape": [3, 4]}
  target = {
      "old": {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.old"},
              "metadata": {**meta, "dtype": "<f4"}},
      "new": {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": "target.new/"},
              "metadata": meta},
      "very_old": {"driver": "zarr", "kvstore": {"driver": "file"}, "path": "target.very_old", "metadata": meta},
      "gcs": {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": "target.gcs"},
              "metadata": meta},
      "scalar": np.float32(2.5), "complex": complex(1, 2), "none": None,
  }
  _write_checkpoint(ckpt, {"version": 3, "optimizer": {"target": target, "state": {"step": np.asarray(9, np.int32)}}})
  loaded = checkpoints.load_t5x_checkpoint(str(tmp_path))["target"]
  for name in ("old", "new", "very_old", "gcs"):
    np.testing.assert_array_equal(loaded[name], x)
  assert loaded["scalar"] == np.float32(2.5) and isinstance(loaded["scalar"], np.float32)
  assert loaded["complex"] == complex(1, 2) and loaded["none"] is None


def test_unversioned_and_orbax_hybrid_layouts(tmp_path):
  w = np.arange(4, dtype=np.float32)
  flat = _write_checkpoint(tmp_path / "plain", {"target": {"w": w}, "state": {"step": np.asarray(1, np.int32)}})
  np.testing.assert_array_equal(checkpoints.load_t5x_params(str(flat))["w"], w)
  hybrid = tmp_path / "hybrid"
  zarr_store.write_array(str(hybrid / "_optimizer.target.w"), w)
  _write_checkpoint(hybrid, {"_optimizer": {"target": {"w": "PLACEHOLDER://_optimizer.target.w"},
                                            "state": {"step": 1}}, "flax_mutables": None})
  np.testing.assert_array_equal(checkpoints.load_t5x_params(str(hybrid / "checkpoint"))["w"], w)


@pytest.mark.parametrize("checkpoint_dir, expected", [
    ("gs://my-bucket/models/run/checkpoint_5", "gs://my-bucket/models/run/checkpoint_5/target.a.b"),
    ("gs://my-bucket/models/run/checkpoint_5/", "gs://my-bucket/models/run/checkpoint_5/target.a.b"),
    ("/data/run/checkpoint_5", "/data/run/checkpoint_5/target.a.b"),
])
@pytest.mark.parametrize("kvstore", [
    {"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": "target.a.b/"},
    {"driver": "gfile", "path": "target.a.b"},
    {"driver": "file", "path": "target.a.b/"},
])
def test_resolve_tensorstore_path(checkpoint_dir, expected, kvstore):
  spec = {"driver": "zarr", "kvstore": kvstore, "metadata": {"shape": [1]}}
  assert checkpoints.resolve_tensorstore_path(spec, checkpoint_dir) == expected


def test_resolve_tensorstore_path_old_and_absolute_forms():
  very_old = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "x"}, "path": "target.w", "metadata": {}}
  assert checkpoints.resolve_tensorstore_path(very_old, "gs://b/m/checkpoint_1") == "gs://b/m/checkpoint_1/target.w"
  absolute = {"driver": "zarr", "kvstore": {"driver": "file", "path": "/abs/target.w"}, "metadata": {}}
  assert checkpoints.resolve_tensorstore_path(absolute, "gs://b/m/checkpoint_1") == "gs://b/abs/target.w"
  with pytest.raises(ValueError, match="'s3'"):
    checkpoints.resolve_tensorstore_path({"driver": "zarr", "kvstore": {"driver": "s3", "path": "w"}, "metadata": {}},
                                         "/m")


# ------------------------------------------------------------------------------------------ errors and detection


def test_missing_path(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="checkpoint_<step>") as info:
    checkpoints.load_t5x_checkpoint(str(missing))
  assert isinstance(info.value, FileNotFoundError) and str(missing) in str(info.value)
  with pytest.raises(checkpoints.CheckpointNotFoundError):
    checkpoints.detect_checkpoint_format(missing)
  missing.mkdir()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="empty"):
    checkpoints.load_t5x_params(str(missing))
  assert checkpoints.latest_step(missing) is None and checkpoints.all_steps(tmp_path / "absent") == []


def test_dir_that_is_not_a_checkpoint(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(checkpoints.UnknownCheckpointFormatError) as info:
    checkpoints.load_t5x_params(str(tmp_path))
  message = str(info.value)
  assert str(tmp_path) in message and all(f"'{name}'" in message for name in formats.FORMATS)
  with pytest.raises(checkpoints.UnknownCheckpointFormatError):
    checkpoints.detect_checkpoint_format(tmp_path / "notes.txt")


def test_detects_other_formats(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  orbax = tmp_path / "orbax" / "checkpoint_3"
  (orbax / "state").mkdir(parents=True)
  (orbax / "state" / "_METADATA").write_text("{}")
  tf_dir = tmp_path / "tf"
  tf_dir.mkdir()
  (tf_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-10"\n')
  (tf_dir / "model.ckpt-10.index").write_bytes(b"")
  assert checkpoints.detect_checkpoint_format(hf) == "hf"
  assert checkpoints.detect_checkpoint_format(tmp_path / "orbax") == "orbax"
  assert checkpoints.detect_checkpoint_format(tf_dir) == "tf"
  assert checkpoints.detect_checkpoint_format(tf_dir / "model.ckpt-10") == "tf"
  with pytest.raises(ValueError, match="not a T5X native"):
    checkpoints.load_t5x_checkpoint(str(hf))


def test_rejects_version_1(tmp_path):
  _write_checkpoint(tmp_path, {"version": 1, "optimizer": {"target": {"w": np.zeros(2)}}})
  with pytest.raises(ValueError, match="version-1"):
    checkpoints.load_t5x_checkpoint(str(tmp_path))


@pytest.mark.parametrize("spec_dtype", [{"metadata_dtype": "<u2"}, {"dtype": "uint16"}, {}])
def test_rejects_uint16(tmp_path, spec_dtype):
  zarr_store.write_array(str(tmp_path / "target.w"), np.arange(4, dtype=np.uint16))
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.w"}, "metadata": {"shape": [4]}}
  if "metadata_dtype" in spec_dtype:
    spec["metadata"]["dtype"] = spec_dtype["metadata_dtype"]
  if "dtype" in spec_dtype:
    spec["dtype"] = spec_dtype["dtype"]
  _write_checkpoint(tmp_path, {"version": 3, "optimizer": {"target": {"w": spec}, "state": {}}})
  with pytest.raises(ValueError, match="Please update saved types to bfloat16"):
    checkpoints.load_t5x_checkpoint(str(tmp_path))


def test_shape_mismatch_and_bad_names(tmp_path):
  zarr_store.write_array(str(tmp_path / "target.w"), np.zeros((2, 3), np.float32))
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.w"}, "metadata": {"shape": [3, 2]}}
  _write_checkpoint(tmp_path, {"version": 3, "optimizer": {"target": {"w": spec, "d": {"x": 1}}, "state": {}}})
  with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
    checkpoints.load_t5x_params(str(tmp_path))
  with pytest.raises(KeyError, match="'nope'.*'d', 'w'"):
    checkpoints.load_variable(str(tmp_path), "nope/x")
  with pytest.raises(ValueError, match="subtree"):
    checkpoints.load_variable(str(tmp_path), "d")


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "int8"}, "dtype='int8'"), ({"compressor": "lz4"}, "compressor='lz4'"), ({"keep": 0}, "keep=0"),
    ({"step": -1}, "step=-1"),
])
def test_save_rejects_bad_arguments(tmp_path, kwargs, match):
  kwargs = {"step": 1, **kwargs}
  with pytest.raises(ValueError, match=match):
    checkpoints.save_t5x_checkpoint(str(tmp_path), params={"w": np.zeros(2)}, **kwargs)
  assert not list(tmp_path.iterdir())


def test_load_rejects_integer_restore_dtype(tiny_t5x_checkpoint):
  with pytest.raises(ValueError, match="restore_dtype='int32'"):
    checkpoints.load_t5x_params(str(tiny_t5x_checkpoint), restore_dtype="int32")
