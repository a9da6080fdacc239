"""A small numpy reader and writer for the zarr v2 arrays that T5X writes through tensorstore.

Covers what tensorstore's zarr driver puts on disk for checkpoints: one `.zarray` JSON file plus one compressed
file per chunk (padded to the full chunk shape at the edges), C or F order, gzip / zlib / bz2 / zstd or no
compressor (blosc too when numcodecs is installed), numpy dtype strings such as `<f4` and tensorstore's extension
dtype names such as `bfloat16` (stored as little-endian 2-byte words). A missing chunk reads as the fill value.
"""
from __future__ import annotations

import bz2
import gzip
import json
import math
import zlib
from typing import Any, Sequence

from etils import epath
import ml_dtypes
import numpy as np
import zstandard

TARGET_CHUNK_BYTES = 64 * 2**20  # Default chunk size of the writer, as T5X's numpy save path.
WRITE_COMPRESSORS = ("gzip", "zstd", None)


def _blosc_decompress(data: bytes, nbytes: int) -> bytes:
  """Blosc (tensorstore's default codec, not used by T5X) needs the optional numcodecs package."""
  try:
    from numcodecs import blosc  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("This zarr array is blosc-compressed; `pip install numcodecs` to read it.") from e
  return blosc.decompress(data)


_DECOMPRESSORS = {
    "gzip": lambda data, nbytes: gzip.decompress(data),
    "zlib": lambda data, nbytes: zlib.decompress(data),
    "bz2": lambda data, nbytes: bz2.decompress(data),
    "zstd": lambda data, nbytes: zstandard.ZstdDecompressor().decompress(data, max_output_size=nbytes),
    "blosc": _blosc_decompress,
}


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


def _parse_zarr_dtype(text: str) -> np.dtype:
  if not isinstance(text, str):
    raise ValueError(f"Structured zarr dtype {text!r} is not supported; only scalar dtypes are.")
  return numpy_dtype(text)


def _zarr_dtype_string(dtype: np.dtype) -> str:
  return dtype.name if is_ml_dtype(dtype) else dtype.newbyteorder("<").str


def _fill_value(value: Any, dtype: np.dtype) -> Any:
  """The `.zarray` fill_value as a number (null means zeros, as tensorstore reads it)."""
  if value is None:
    return 0
  specials = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
  if isinstance(value, str) and value not in specials:
    raise ValueError(f"Unsupported zarr fill_value {value!r} for dtype {dtype}.")
  return specials.get(value, value)


def _chunk_key(index: Sequence[int], separator: str) -> str:
  return separator.join(map(str, index)) if index else "0"


def _chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
  return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


def _chunk_region(index: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> tuple[slice, ...]:
  return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))


def _decode_chunk(data: bytes, meta: dict[str, Any], dtype: np.dtype, name: str) -> np.ndarray:
  """Decompresses one chunk file into an array of the full chunk shape."""
  chunks = tuple(meta["chunks"])
  nbytes = math.prod(chunks) * dtype.itemsize
  compressor = meta.get("compressor")
  if compressor is not None:
    codec = compressor.get("id")
    if codec not in _DECOMPRESSORS:
      raise ValueError(f"Zarr array {name} uses compressor {codec!r}; supported: {sorted(_DECOMPRESSORS)} or none.")
    data = _DECOMPRESSORS[codec](data, nbytes)
  if len(data) != nbytes:
    raise ValueError(f"Zarr chunk of {name} has {len(data)} bytes, expected {nbytes} for chunk shape {chunks}.")
  if is_ml_dtype(dtype):
    words = np.frombuffer(data, dtype=f"<u{dtype.itemsize}")
    flat = words.astype(f"=u{dtype.itemsize}", copy=False).view(dtype)
  else:
    flat = np.frombuffer(data, dtype=dtype)
  return flat.reshape(chunks, order=meta.get("order", "C"))


def read_zarr_metadata(path: epath.PathLike) -> dict[str, Any]:
  """The parsed `.zarray` of the zarr v2 array in dir `path`."""
  zarray = epath.Path(path) / ".zarray"
  if not zarray.exists():
    raise FileNotFoundError(f"No zarr array at {path}: {zarray} is missing (the checkpoint is incomplete).")
  meta = json.loads(zarray.read_text())
  if meta.get("zarr_format") != 2:
    raise ValueError(f"{zarray} has zarr_format {meta.get('zarr_format')!r}; only zarr v2 is supported.")
  if meta.get("filters"):
    raise ValueError(f"{zarray} uses zarr filters {meta['filters']}; arrays with filters are not supported.")
  return meta


def read_zarr_array(path: epath.PathLike) -> np.ndarray:
  """Reads the whole zarr v2 array in dir `path` into a native-byte-order numpy array."""
  path = epath.Path(path)
  meta = read_zarr_metadata(path)
  shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
  dtype = _parse_zarr_dtype(meta["dtype"])
  native = dtype.newbyteorder("=")
  out = np.full(shape, _fill_value(meta.get("fill_value"), native), dtype=native)
  if out.size == 0:
    return out
  separator = meta.get("dimension_separator", ".")
  present = {p.name for p in path.iterdir()}
  for index in np.ndindex(*_chunk_grid(shape, chunks)):
    key = _chunk_key(index, separator)
    if key.split("/")[0] not in present:
      continue  # Never written: keeps the fill value.
    chunk = _decode_chunk((path / key).read_bytes(), meta, dtype, str(path))
    region = _chunk_region(index, shape, chunks)
    out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
  return out


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


def write_zarr_array(path: epath.PathLike, array: np.ndarray, *, compressor: str | None = "gzip",
                     chunks: Sequence[int] | None = None) -> dict[str, Any]:
  """Writes `array` as a zarr v2 array in dir `path`, as tensorstore would; returns the `.zarray` dict."""
  if compressor not in WRITE_COMPRESSORS:
    raise ValueError(f"compressor={compressor!r} is not supported for writing; use one of {WRITE_COMPRESSORS}.")
  array = np.asarray(array)
  dtype = array.dtype
  if chunks is None:
    chunks = choose_chunk_shape(array.shape, TARGET_CHUNK_BYTES // dtype.itemsize)
  chunks = [int(c) for c in chunks]
  if len(chunks) != array.ndim or any(c < 1 for c in chunks):
    raise ValueError(f"chunks={chunks} must give one positive size per dim of shape {array.shape}.")
  meta = {
      "chunks": chunks,
      "compressor": {"gzip": {"id": "gzip", "level": 1}, "zstd": {"id": "zstd", "level": 1}, None: None}[compressor],
      "dtype": _zarr_dtype_string(dtype),
      "fill_value": None,
      "filters": None,
      "order": "C",
      "shape": list(array.shape),
      "zarr_format": 2,
  }
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / ".zarray").write_text(json.dumps(meta))
  for index in np.ndindex(*_chunk_grid(array.shape, chunks)):
    region = _chunk_region(index, array.shape, chunks)
    block = np.zeros(chunks, dtype=dtype)
    block[tuple(slice(0, r.stop - r.start) for r in region)] = array[region]
    words = block.view(f"u{dtype.itemsize}") if is_ml_dtype(dtype) else block
    data = words.astype(words.dtype.newbyteorder("<"), copy=False).tobytes()
    if compressor == "gzip":
      data = gzip.compress(data, compresslevel=1, mtime=0)
    elif compressor == "zstd":
      data = zstandard.ZstdCompressor(level=1).compress(data)
    (path / _chunk_key(index, ".")).write_bytes(data)
  return meta
