"""Checkpoint arrays read region by region: each process reads from storage only the shards its devices hold.

A reader of a checkpoint format hands out `StoredArray`s (shape, dtype and a function reading one region) instead
of whole numpy arrays. `place` turns them into global `jax.Array`s: for every parameter it asks the target
sharding which region each of this process's devices holds, reads each distinct region once (a replicated
parameter is read once per process, not once per device), concurrently, with at most `max_inflight_bytes` of
regions read but not yet on their devices, and assembles the array from the per-device pieces.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from typing import Any, Callable, Mapping

import jax
import numpy as np

Index = tuple[slice, ...]
MAX_INFLIGHT_BYTES = 2 * 2**30
IO_THREADS = 16


@dataclasses.dataclass(frozen=True)
class StoredArray:
  """An array still in storage: `read(index)` returns the region `index` (a tuple of slices, one per dim)."""
  shape: tuple[int, ...]
  dtype: np.dtype
  read_region: Callable[[Index], np.ndarray] = dataclasses.field(repr=False)
  name: str = ""

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

  def read(self, index: Index | None = None) -> np.ndarray:
    """The region (the whole array by default) as numpy, with this array's dtype."""
    index = tuple(index) if index is not None else tuple(slice(0, n) for n in self.shape)
    value = np.asarray(self.read_region(index))
    want = tuple(len(range(*s.indices(n))) for s, n in zip(index, self.shape))
    if value.shape != want:
      raise ValueError(f"Reading {self.name or 'an array'}{list(index)} gave shape {value.shape}, expected {want}.")
    return value.astype(self.dtype, copy=False)

  def astype(self, dtype: Any) -> "StoredArray":
    """The same array read as `dtype` (each region is cast after it is read)."""
    dtype = np.dtype(dtype)
    if dtype == self.dtype:
      return self
    return dataclasses.replace(self, dtype=dtype, read_region=lambda index: self.read(index).astype(dtype))

  def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "StoredArray":
    """The same array with the elementwise `fn` applied to each region read (dtype unchanged)."""
    return dataclasses.replace(self, read_region=lambda index: fn(self.read(index)))

  @property
  def T(self) -> "StoredArray":  # pylint: disable=invalid-name
    """The transpose (a region of it is the transposed region of this array)."""
    return dataclasses.replace(self, shape=self.shape[::-1],
                               read_region=lambda index: np.ascontiguousarray(self.read(tuple(index)[::-1]).T))

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    value = self.read()
    return value if dtype is None else value.astype(dtype)


def materialize(tree: Any) -> Any:
  """Nested dicts with every `StoredArray` read whole into numpy (for callers that want host arrays)."""
  if isinstance(tree, Mapping):
    return {k: materialize(v) for k, v in tree.items()}
  return tree.read() if isinstance(tree, StoredArray) else tree


def array_equal(a: Any, b: Any, block_bytes: int = 64 * 2**20) -> bool:
  """`np.array_equal` that reads `StoredArray`s in blocks of rows, stopping at the first difference: one row, then
  blocks doubling up to `block_bytes` (arrays that differ early cost a few rows)."""
  shape_a, shape_b = tuple(np.shape(a)), tuple(np.shape(b))
  if shape_a != shape_b:
    return False
  if not shape_a or not isinstance(a, StoredArray) and not isinstance(b, StoredArray):
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
  row_bytes = max(1, int(np.prod(shape_a[1:], dtype=np.int64)) * 4)
  take = lambda x, start, stop: (x.read((slice(start, stop),) + tuple(slice(0, n) for n in shape_a[1:]))
                                 if isinstance(x, StoredArray) else np.asarray(x)[start:stop])
  start, rows = 0, 1
  while start < shape_a[0]:
    stop = min(start + rows, shape_a[0])
    if not np.array_equal(take(a, start, stop), take(b, start, stop)):
      return False
    start, rows = stop, min(2 * rows, max(1, block_bytes // row_bytes))
  return True


def _nbytes(index: Index, shape: tuple[int, ...], dtype: np.dtype) -> int:
  return int(np.prod([len(range(*s.indices(n))) for s, n in zip(index, shape)], dtype=np.int64)) * dtype.itemsize


class _ByteBudget:
  """Blocks `acquire(n)` while more than `limit` bytes are held (one request larger than the limit still runs)."""

  def __init__(self, limit: int):
    self._limit, self._held = limit, 0
    self._cond = threading.Condition()

  def acquire(self, n: int) -> None:
    with self._cond:
      self._cond.wait_for(lambda: self._held == 0 or self._held + n <= self._limit)
      self._held += n

  def release(self, n: int) -> None:
    with self._cond:
      self._held -= n
      self._cond.notify_all()


def _key(index: Index) -> tuple[tuple[int | None, ...], ...]:
  return tuple((s.start, s.stop, s.step) for s in index)


def place(arrays: Mapping[str, StoredArray], shardings: Mapping[str, jax.sharding.Sharding],
          dtypes: Mapping[str, Any] | None = None, max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
          ) -> dict[str, jax.Array]:
  """Global arrays with the given shardings (cast to `dtypes[name]` when given), reading only local shards."""
  budget = _ByteBudget(max_inflight_bytes)
  dtypes = dtypes or {}

  def load(name: str, index: Index, devices: list[Any]) -> list[jax.Array]:
    source = arrays[name]
    dtype = np.dtype(dtypes.get(name, source.dtype))
    size = _nbytes(index, source.shape, source.dtype) + _nbytes(index, source.shape, dtype)
    budget.acquire(size)
    try:
      value = source.read(index).astype(dtype, copy=False)
      pieces = [jax.device_put(value, d) for d in devices]
      for piece in pieces:
        piece.block_until_ready()
      return pieces
    finally:
      budget.release(size)

  placed = {}
  jobs: dict[str, list[tuple[list[Any], concurrent.futures.Future]]] = {}
  with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
    for name, source in arrays.items():
      by_region: dict[Any, tuple[Index, list[Any]]] = {}
      for device, index in shardings[name].addressable_devices_indices_map(source.shape).items():
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, source.shape))
        by_region.setdefault(_key(index), (index, []))[1].append(device)
      jobs[name] = [(devices, pool.submit(load, name, index, devices)) for index, devices in by_region.values()]
    for name, regions in jobs.items():
      pieces = [piece for _, future in regions for piece in future.result()]
      placed[name] = jax.make_array_from_single_device_arrays(arrays[name].shape, shardings[name], pieces)
  return placed
