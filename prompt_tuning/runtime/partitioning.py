"""Sharding over a ('data', 'model') device mesh by logical axis names, following T5X's `PjitPartitioner`.

Modules name their array axes logically ("batch", "embed", "mlp", ...); a priority-ordered rules table maps those
names to mesh axes, as T5X does. The `Partitioner` owns the mesh and the rules and turns them into shardings
for parameters, batches and jitted functions.

Mesh layout (T5X's): `num_partitions` devices form the 'model' axis, the rest of the devices form the
'data' axis. `model_parallel_submesh=(x, y, z, c)` picks a physical TPU tile for the 'model' axis; on CPU and GPU,
where devices have no torus coordinates, it just means `num_partitions = x*y*z*c`. With several processes the mesh
covers the global `jax.devices()`, and the 'data' axis spans the hosts.

Multi-slice (T5X's hybrid mesh): `ici_mesh_shape` and `dcn_mesh_shape`, both `(replica, data, model)`, give a
('replica', 'data', 'model') mesh whose size is their product: `ici` within a slice (or a host, on CPU and GPU),
`dcn` across slices (hosts). The batch is then split over ('replica', 'data') and `num_partitions` is ignored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning.family import PROMPT_AXIS_RULES

LogicalAxisRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
MESH_AXES = ("data", "model")
HYBRID_MESH_AXES = ("replica", "data", "model")

# Axes that are never sharded, appended to every standard rules table (after the variant-specific rules).
_REPLICATED_AXES = ("relpos_buckets", "abspos_buckets", "length", "layers", "stack", "mlp_activations")


def standard_logical_axis_rules(activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
                                additional_rules: Sequence[tuple[str, Any]] | None = None) -> LogicalAxisRules:
  """T5X's default rules; `(2, ·)` shards 'embed' over 'model', `(·, 2)` over 'data' (1-D by default)."""
  embed_rules = {
      (1, 1): [("embed", None)],
      (2, 1): [("embed", "model")],
      (1, 2): [("embed", "data")],
      (2, 2): [("embed", "model"), ("embed", "data")],
  }
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims not in embed_rules:
    raise ValueError(f"activation_partitioning_dims={dims[0]}, parameter_partitioning_dims={dims[1]} is not "
                     "supported; each must be 1 or 2.")
  # With 1-D sharding 'embed' sits before 'mlp' (as None); otherwise it comes after the model-sharded axes,
  # so that e.g. an (embed, mlp) kernel still gives 'model' to 'mlp'.
  head = [("batch", "data"), ("vocab", "model")]
  model_axes = [("mlp", "model"), ("heads", "model"), ("kv", None), ("joined_kv", "model")]
  if dims == (1, 1):
    rules = head + embed_rules[dims] + model_axes
  else:
    rules = head + model_axes + embed_rules[dims]
  rules += [(name, None) for name in _REPLICATED_AXES]
  rules += [tuple(rule) for rule in additional_rules or ()]
  return tuple(rules)


def prompt_logical_axis_rules() -> LogicalAxisRules:
  """The plain prompt's rules: it stays replicated. A family declares its own (`PromptFamily.logical_axis_rules`)."""
  return PROMPT_AXIS_RULES


def default_logical_axis_rules() -> LogicalAxisRules:
  """What prompt tuning uses when no rules are given: the standard rules, then the prompt rules."""
  return standard_logical_axis_rules(additional_rules=prompt_logical_axis_rules())


# ---------------------------------------------------------------------------------------------------------- mesh
def _tpu_tile_grid(devices: Sequence[Any], submesh: tuple[int, ...]) -> np.ndarray:
  """[data, model] grid where each row is one (x, y, z, core) tile of the physical TPU slice."""
  coords = [(*d.coords, d.core_on_chip) for d in devices]
  bounds = tuple(max(c[i] for c in coords) + 1 for i in range(4))
  if math.prod(bounds) != len(devices):
    raise ValueError(f"The {len(devices)} TPU devices do not fill a {bounds} box; pass num_partitions instead "
                     "of model_parallel_submesh.")
  if any(g % m for g, m in zip(bounds, submesh)):
    raise ValueError(f"model_parallel_submesh={submesh} must divide the TPU slice {bounds} (x, y, z, cores) "
                     "dimension by dimension.")
  grid = np.empty(bounds, dtype=object)
  for device, c in zip(devices, coords):
    grid[c] = device
  # Split each physical dimension into (tiles, within tile); tiles become 'data', within-tile becomes 'model'.
  grid = grid.reshape([s for g, m in zip(bounds, submesh) for s in (g // m, m)])
  grid = grid.transpose([0, 2, 4, 6, 1, 3, 5, 7])
  return grid.reshape(-1, math.prod(submesh))


def _device_grid(devices: Sequence[Any], num_partitions: int) -> np.ndarray:
  """[data, model] grid; devices of one host stay together so that 'data' spans hosts."""
  shape = (len(devices) // num_partitions, num_partitions)
  if devices[0].platform == "tpu":
    return mesh_utils.create_device_mesh(shape, devices)
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return np.array(ordered, dtype=object).reshape(shape)


def _hybrid_grid(devices: Sequence[Any], ici_mesh_shape: Sequence[int], dcn_mesh_shape: Sequence[int]) -> np.ndarray:
  """[replica, data, model] grid: `ici` inside each slice (TPU `slice_index`), or else inside each process (CPU,
  GPU hosts); `dcn` across them."""
  shapes = {"ici_mesh_shape": tuple(ici_mesh_shape), "dcn_mesh_shape": tuple(dcn_mesh_shape)}
  for name, shape in shapes.items():
    if len(shape) != 3 or any(not isinstance(n, int) or n < 1 for n in shape):
      raise ValueError(f"{name}={shape!r} must be 3 positive ints: (replica, data, model).")
  ici, dcn = shapes.values()
  if math.prod(ici) * math.prod(dcn) != len(devices):
    raise ValueError(f"ici_mesh_shape={ici} times dcn_mesh_shape={dcn} covers {math.prod(ici) * math.prod(dcn)} "
                     f"devices, but there are {len(devices)}; ici should cover one slice (or host) and dcn count "
                     "the slices (hosts).")
  slices = len({getattr(d, "slice_index", None) for d in devices})
  processes = len({d.process_index for d in devices})
  if math.prod(dcn) not in (slices, processes):
    raise ValueError(f"dcn_mesh_shape={dcn} asks for {math.prod(dcn)} slices or processes, but the devices come "
                     f"from {slices} slice(s) and {processes} process(es); make the product of dcn_mesh_shape "
                     "one of those.")
  by_process = math.prod(dcn) != slices or getattr(devices[0], "slice_index", None) is None
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process)


def get_mesh(num_partitions: int | None = 1, model_parallel_submesh: tuple[int, ...] | None = None,
             devices: Sequence[Any] | None = None, backend: str | None = None,
             ici_mesh_shape: Sequence[int] | None = None, dcn_mesh_shape: Sequence[int] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: every device of every process on `backend`).

  Give exactly one of `num_partitions` (size of the 'model' axis) and `model_parallel_submesh` (a TPU
  (x, y, z, cores) tile; on CPU/GPU only its product counts and is used as `num_partitions`). With both
  `ici_mesh_shape` and `dcn_mesh_shape` the mesh is ('replica', 'data', 'model') instead (module docstring).
  """
  if (ici_mesh_shape is None) != (dcn_mesh_shape is None):
    raise ValueError(f"Give both ici_mesh_shape and dcn_mesh_shape for a multi-slice mesh, or neither; got "
                     f"ici_mesh_shape={ici_mesh_shape!r}, dcn_mesh_shape={dcn_mesh_shape!r}.")
  devices = list(jax.devices(backend) if devices is None else devices)
  if ici_mesh_shape is not None:
    return Mesh(_hybrid_grid(devices, ici_mesh_shape, dcn_mesh_shape), HYBRID_MESH_AXES)
  if (num_partitions is None) == (model_parallel_submesh is None):
    raise ValueError(f"Give exactly one of num_partitions={num_partitions!r} and model_parallel_submesh="
                     f"{model_parallel_submesh!r}; set the other to None.")
  if model_parallel_submesh is not None:
    submesh = tuple(model_parallel_submesh)
    if len(submesh) != 4 or any(not isinstance(s, int) or s < 1 for s in submesh):
      raise ValueError(f"model_parallel_submesh={model_parallel_submesh!r} must be 4 positive ints "
                       "(x, y, z, cores).")
    if devices[0].platform == "tpu" and hasattr(devices[0], "coords"):
      return Mesh(_tpu_tile_grid(devices, submesh), MESH_AXES)
    num_partitions = math.prod(submesh)
  if not isinstance(num_partitions, int) or num_partitions < 1:
    raise ValueError(f"num_partitions={num_partitions!r} must be a positive integer.")
  if len(devices) % num_partitions:
    divisors = [k for k in range(1, len(devices) + 1) if len(devices) % k == 0]
    raise ValueError(f"num_partitions={num_partitions} does not divide the {len(devices)} devices; "
                     f"choose one of {divisors}.")
  return Mesh(_device_grid(devices, num_partitions), MESH_AXES)


# --------------------------------------------------------------------------------------------------- partitioner
@dataclasses.dataclass(frozen=True)
class DataLayout:
  """How this process reads input: its shard of the global batch (T5X's `DataLayout`)."""

  batch_size: int  # global batch size
  shard_id: int
  num_shards: int
  is_first_host_in_replica_set: bool  # hosts that hold the same batch rows form a replica set


class PartitionedFn:
  """A jitted function that is traced and run inside the partitioner's mesh and logical-axis rules."""

  def __init__(self, jitted: Callable, context: Callable[[], contextlib.AbstractContextManager]):
    self._jitted = jitted
    self._context = context

  def __call__(self, *args, **kwargs):
    with self._context():
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with self._context():
      return self._jitted.lower(*args, **kwargs)

  def cache_size(self) -> int:
    """How many times it was compiled (1 after any number of same-shaped calls)."""
    return self._jitted._cache_size()  # pylint: disable=protected-access


class Partitioner:
  """Mesh + logical axis rules -> shardings for parameters, batches and jitted functions.

  Args (T5X `PjitPartitioner`'s, except `devices`):
    num_partitions, model_parallel_submesh, backend, devices, ici_mesh_shape, dcn_mesh_shape: as `get_mesh`;
      the mesh is built on first use.
    params_on_devices: only True (parameters live on the accelerators) is supported.
    logical_axis_rules: priority-ordered `(logical name, mesh axis | None)` pairs; `None` gives the standard
      T5X rules plus the prompt rules. With a multi-slice mesh, 'batch' is mapped to ('replica', 'data').

  `data_partition_spec` is `PartitionSpec('data')` (multi-slice: `PartitionSpec(('replica', 'data'))`): batches
  are split along their first dimension.
  """

  def __init__(self, num_partitions: int | None = 1, model_parallel_submesh: tuple[int, ...] | None = None,
               params_on_devices: bool = True, backend: str | None = None,
               ici_mesh_shape: Sequence[int] | None = None, dcn_mesh_shape: Sequence[int] | None = None,
               logical_axis_rules: Sequence[tuple[str, Any]] | None = None,
               devices: Sequence[Any] | None = None):
    if not params_on_devices:
      raise ValueError("params_on_devices=False (parameters in host memory) is not supported; leave it True.")
    if (ici_mesh_shape is None) != (dcn_mesh_shape is None):  # raised here, before any mesh is built
      get_mesh(ici_mesh_shape=ici_mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    self._mesh_args = dict(num_partitions=num_partitions, model_parallel_submesh=model_parallel_submesh,
                           devices=devices, backend=backend, ici_mesh_shape=ici_mesh_shape,
                           dcn_mesh_shape=dcn_mesh_shape)
    hybrid = ici_mesh_shape is not None
    self.data_axes: tuple[str, ...] = ("replica", "data") if hybrid else ("data",)
    rules = default_logical_axis_rules() if logical_axis_rules is None else logical_axis_rules
    self.logical_axis_rules: LogicalAxisRules = tuple(
        (rule[0], self.data_axes) if hybrid and rule[0] == "batch" else tuple(rule) for rule in rules)

  def add_logical_axis_rules(self, rules: Sequence[tuple[str, Any]]) -> None:
    """Append `rules` (e.g. a prompt family's) for logical axes the table does not name yet; its own rules win."""
    known = {rule[0] for rule in self.logical_axis_rules}
    self.logical_axis_rules += tuple(tuple(rule) for rule in rules if rule[0] not in known)

  @property
  def data_partition_spec(self) -> PartitionSpec:
    return PartitionSpec(self.data_axes if len(self.data_axes) > 1 else self.data_axes[0])

  @functools.cached_property
  def mesh(self) -> Mesh:
    """Built on first use, so `jax.distributed.initialize` may run after the partitioner is configured."""
    return get_mesh(**self._mesh_args)

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.data_partition_spec)

  @property
  def num_data_shards(self) -> int:
    return math.prod(self.mesh.shape[axis] for axis in self.data_axes)

  # ---------------------------------------------------------------------------------------------- parameters
  def params_specs(self, abstract_tree: Any) -> Any:
    """Mesh-axis `PartitionSpec`s for a tree of `nn.LogicallyPartitioned` boxes (unboxed leaves: replicated)."""
    return nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), self.logical_axis_rules)

  def params_shardings(self, abstract_tree: Any) -> Any:
    """`NamedSharding`s for a boxed tree; raises if a sharded dimension does not divide evenly."""
    specs = self.params_specs(abstract_tree)
    jax.tree_util.tree_map_with_path(self._check_divisible, nn.meta.unbox(abstract_tree), specs)
    return jax.tree_util.tree_map(lambda spec: NamedSharding(self.mesh, spec), specs,
                                  is_leaf=lambda x: isinstance(x, PartitionSpec))

  def _check_divisible(self, path: Any, leaf: Any, spec: PartitionSpec) -> None:
    for dim, (size, axes) in enumerate(zip(np.shape(leaf), spec)):
      ways = math.prod(self.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
      if size % ways:
        raise ValueError(f"{jax.tree_util.keystr(path)} of shape {np.shape(leaf)} cannot be split as {spec} on "
                         f"mesh {dict(self.mesh.shape)}: dimension {dim} ({size}) is not divisible by {ways}. "
                         "Pick a num_partitions that divides it, or map that logical axis to None in "
                         "logical_axis_rules.")

  def initialize(self, init_fn: Callable[..., Any], abstract_tree: Any, *args: Any) -> Any:
    """Run `init_fn(*args)` (e.g. `lambda rng: model.init(rng, ...)`) so each device creates only its shards.

    `abstract_tree` is the boxed output of `jax.eval_shape(init_fn, *args)`; the result keeps `init_fn`'s
    structure (boxed if `init_fn` returns boxes).
    """
    args = jax.device_put(args, NamedSharding(self.mesh, PartitionSpec()))
    return self.partition(init_fn, None, self.params_shardings(abstract_tree))(*args)

  # --------------------------------------------------------------------------------------------- computation
  @contextlib.contextmanager
  def activation_rules_context(self) -> Iterator[None]:
    """Mesh and logical rules in scope, so `nn.with_logical_constraint` shards activations."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
      yield

  def partition(self, fn: Callable, in_shardings: Any, out_shardings: Any,
                donate_argnums: int | Sequence[int] = (), static_argnums: int | Sequence[int] = ()
                ) -> PartitionedFn:
    """`jax.jit(fn)` with these shardings (`PartitionSpec`s are placed on the mesh), run in the rules context."""
    jitted = jax.jit(fn, in_shardings=self._on_mesh(in_shardings), out_shardings=self._on_mesh(out_shardings),
                     donate_argnums=donate_argnums, static_argnums=static_argnums)
    return PartitionedFn(jitted, self.activation_rules_context)

  def _on_mesh(self, tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda s: NamedSharding(self.mesh, s) if isinstance(s, PartitionSpec) else s,
                                  tree, is_leaf=lambda x: isinstance(x, PartitionSpec))

  # ---------------------------------------------------------------------------------------------------- data
  def check_batch_size(self, batch_size: int) -> None:
    """Raise unless the global batch splits evenly over the data-parallel shards."""
    shards = self.num_data_shards
    if batch_size <= 0 or batch_size % shards:
      fixed = max(shards, -(-batch_size // shards) * shards)
      raise ValueError(f"Global batch size {batch_size} is not divisible by the {shards} data-parallel shards of "
                       f"mesh {dict(self.mesh.shape)}; use a multiple of {shards} (e.g. {fixed}) or change "
                       "num_partitions.")

  @functools.cached_property
  def _host_rows(self) -> dict[int, tuple[int, ...]]:
    """For each process, the batch-shard indices (mesh rows over the data axes) its devices hold."""
    rows: dict[int, set[int]] = {}
    grid = self.mesh.devices.reshape(-1, self.mesh.shape["model"])  # ('replica', 'data') flattened, as the batch
    for (row, _), device in np.ndenumerate(grid):
      rows.setdefault(device.process_index, set()).add(row)
    out = {p: tuple(sorted(r)) for p, r in rows.items()}
    for p, r in out.items():
      overlapping = [q for q, s in out.items() if s != r and set(s) & set(r)]
      if r != tuple(range(r[0], r[-1] + 1)) or overlapping:
        raise ValueError(f"Process {p} holds data rows {r} of mesh {dict(self.mesh.shape)}, which are not one "
                         "block of its own; choose another num_partitions / model_parallel_submesh.")
    return out

  def get_data_layout(self, batch_size: int) -> DataLayout:
    """Which shard of the input this process reads (pass `shard_id`/`num_shards` to the data pipeline)."""
    self.check_batch_size(batch_size)
    mine = self._host_rows[jax.process_index()]
    blocks = sorted(set(self._host_rows.values()))
    first = min(p for p, r in self._host_rows.items() if r == mine)
    return DataLayout(batch_size=batch_size, shard_id=blocks.index(mine), num_shards=len(blocks),
                      is_first_host_in_replica_set=first == jax.process_index())

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays split over 'data' from this process's local batch (its rows of the global batch)."""
    host_groups = self.num_data_shards // len(self._host_rows[jax.process_index()])
    out = {}
    for name, local in batch.items():
      local = np.asarray(local)
      if local.ndim == 0:
        raise ValueError(f"Batch feature {name!r} is a scalar; every feature needs a leading batch dimension.")
      global_shape = (local.shape[0] * host_groups,) + local.shape[1:]
      self.check_batch_size(global_shape[0])
      out[name] = jax.make_array_from_process_local_data(self.data_sharding, local, global_shape)
    return out


PjitPartitioner = Partitioner  # T5X name, for gin files
