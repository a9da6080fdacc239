"""T5X's zarr v2 arrays through TensorStore: open, read a region, write, and count the bytes read from storage.

T5X writes each array with TensorStore's zarr driver (gzip or zstd chunks, numpy dtype strings such as `<f4` or
the extension name `bfloat16`); reading them with the same library gives chunk-by-chunk, concurrent reads of
just the region asked for, local or `gs://`. Orbax writes the same zarr arrays, by default as keys of one OCDBT
database per checkpoint (`ocdbt_kvstore_spec`). Every store shares one context: no chunk cache (each region is
read once and handed on), a cache for OCDBT's manifest and B-tree nodes (each read once per process), bounded
file and copy concurrency.
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Mapping, Sequence

import ml_dtypes
import numpy as np
import tensorstore as ts

from prompt_tuning.runtime.checkpoints.shard_reads import StoredArray

TARGET_CHUNK_BYTES = 64 * 2**20  # Default chunk size of the writer, as T5X's numpy save path.
WRITE_COMPRESSORS = ("gzip", "zstd", None)
IO_CONCURRENCY = 16
OCDBT_NODE_CACHE_BYTES = 64 * 2**20
ZARR_METADATA_KEYS = {".zarray": "zarr", "zarr.json": "zarr3"}  # an array's metadata key -> its driver
_BYTES_READ = re.compile(r"/tensorstore/kvstore/[^/]+/bytes_read$")
_GCS = re.compile(r"gs://([^/]+)/?(.*)$")


def numpy_dtype(dtype: Any) -> np.dtype:
  """`np.dtype` that also knows the ml_dtypes names (`'bfloat16'`, `'float8_e4m3fn'`, ...)."""
  if isinstance(dtype, str) and hasattr(ml_dtypes, dtype):
    return np.dtype(getattr(ml_dtypes, dtype))
  try:
    return np.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"Unknown dtype {dtype!r}; use a numpy dtype name such as 'float32' or 'bfloat16'.") from e


def is_ml_dtype(dtype: np.dtype) -> bool:
  """True for ml_dtypes types (bfloat16, float8...), which zarr stores under their name."""
  return dtype.type.__module__.startswith("ml_dtypes")


@functools.lru_cache(maxsize=None)
def context() -> ts.Context:
  """The TensorStore context of every checkpoint read and write in this process."""
  return ts.Context({"cache_pool": {"total_bytes_limit": 0},
                     "cache_pool#ocdbt": {"total_bytes_limit": OCDBT_NODE_CACHE_BYTES},
                     "file_io_concurrency": {"limit": IO_CONCURRENCY},
                     "data_copy_concurrency": {"limit": os.cpu_count() or 1}})


def kvstore_spec(location: str) -> dict[str, Any]:
  """TensorStore's key-value store for a dir: the `gcs` driver for `gs://bucket/path`, `file` for local paths."""
  location = str(location)
  match = _GCS.match(location)
  if match:
    return {"driver": "gcs", "bucket": match.group(1), "path": match.group(2).rstrip("/") + "/"}
  if "://" in location:
    raise ValueError(f"Cannot open the zarr array at {location!r}: only local paths and gs:// are supported.")
  return {"driver": "file", "path": os.path.abspath(location) + "/"}


def ocdbt_kvstore_spec(location: str) -> dict[str, Any]:
  """The OCDBT database in dir `location` (Orbax's default checkpoint format) as a key-value store."""
  return {"driver": "ocdbt", "base": kvstore_spec(location), "cache_pool": "cache_pool#ocdbt"}


def open_array(location: str) -> ts.TensorStore:
  """The existing zarr v2 array in dir `location` (only its `.zarray` is read)."""
  try:
    return ts.open({"driver": "zarr", "kvstore": kvstore_spec(location)}, open=True, read=True,
                   context=context()).result()
  except ValueError as e:
    if "NOT_FOUND" in str(e):
      raise FileNotFoundError(f"No zarr array at {location}: its .zarray is missing (the checkpoint is "
                              "incomplete).") from e
    raise


def open_arrays(kvstore: Mapping[str, Any], prefix: str) -> dict[str, ts.TensorStore]:
  """Every zarr array (v2 or v3) in `kvstore` whose key starts with `prefix`, opened concurrently: {its key: the
  open array}. Only the keys and the arrays' metadata are read."""
  base = ts.KvStore.open(dict(kvstore), context=context()).result()
  found = {}
  for key in base.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result():
    name, _, leaf = key.decode().rpartition("/")
    if leaf in ZARR_METADATA_KEYS:
      found[name] = ZARR_METADATA_KEYS[leaf]
  opening = {name: ts.open({"driver": driver, "kvstore": {**kvstore, "path": kvstore.get("path", "") + name + "/"}},
                           open=True, read=True, context=context()) for name, driver in found.items()}
  return {name: future.result() for name, future in opening.items()}


def stored_array(store: ts.TensorStore, name: str) -> StoredArray:
  """An open array left in storage: each read takes just the chunks of its region."""
  return StoredArray(tuple(int(n) for n in store.shape), store.dtype.numpy_dtype.newbyteorder("="),
                     lambda index: read_region(store, index), name)


def read_region(store: ts.TensorStore, index: tuple[slice, ...] = ()) -> np.ndarray:
  """The region `index` of an open array as a native-byte-order numpy array (only the chunks it touches)."""
  array = store[index].read().result() if index else store.read().result()
  return array.astype(array.dtype.newbyteorder("="), copy=False)


def read_array(location: str) -> np.ndarray:
  """The whole zarr array in dir `location`."""
  return read_region(open_array(location))


def bytes_read() -> int:
  """Bytes TensorStore has read from storage in this process so far, over all kvstore drivers (file, gcs...)."""
  metrics = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/")
  return sum(int(v.get("value", 0)) for m in metrics if _BYTES_READ.search(m["name"]) for v in m["values"])


def _divisors(n: int) -> list[int]:
  """Ascending divisors of n (just [1] for n <= 1)."""
  small = [d for d in range(1, math.isqrt(max(n, 1)) + 1) if n % d == 0]
  return sorted(set(small + [n // d for d in small])) if n > 1 else [1]


def choose_chunk_shape(shape: Sequence[int], max_elements: int) -> list[int]:
  """Chunk shape made of divisors of `shape`, halving the largest chunk dim until it holds <= max_elements."""
  divisors = [_divisors(s) for s in shape]
  chunks = [ds.pop() for ds in divisors]
  while math.prod(chunks) > max(1, max_elements):
    dim = max((i for i in range(len(chunks)) if divisors[i]), key=lambda i: chunks[i], default=None)
    if dim is None:
      break
    chunks[dim] = divisors[dim].pop()
  return chunks


def write_array(location: str, array: np.ndarray, *, compressor: str | None = "gzip",
                chunks: Sequence[int] | None = None) -> dict[str, Any]:
  """Writes `array` as a zarr v2 array in dir `location`, as T5X does; returns the `.zarray` metadata dict.

  `chunks` defaults to divisors of the shape of at most 64 MiB; T5X itself chunks each array by its per-device
  shard shape. Compressors: gzip or zstd at level 1, or None.
  """
  if compressor not in WRITE_COMPRESSORS:
    raise ValueError(f"compressor={compressor!r} is not supported for writing; use one of {WRITE_COMPRESSORS}.")
  array = np.asarray(array)
  dtype = array.dtype
  if chunks is None:
    chunks = choose_chunk_shape(array.shape, TARGET_CHUNK_BYTES // dtype.itemsize)
  chunks = [int(c) for c in chunks]
  if len(chunks) != array.ndim or any(c < 1 for c in chunks):
    raise ValueError(f"chunks={chunks} must give one positive size per dim of shape {array.shape}.")
  metadata = {
      "chunks": chunks or [1] * array.ndim,
      "compressor": {"gzip": {"id": "gzip", "level": 1}, "zstd": {"id": "zstd", "level": 1}, None: None}[compressor],
      "dtype": dtype.name if is_ml_dtype(dtype) else dtype.newbyteorder("<").str,
      "shape": list(array.shape),
  }
  store = ts.open({"driver": "zarr", "kvstore": kvstore_spec(location), "metadata": metadata}, create=True,
                  open=False, context=context()).result()
  store.write(array).result()
  return {**metadata, "fill_value": None, "filters": None, "order": "C", "zarr_format": 2}
