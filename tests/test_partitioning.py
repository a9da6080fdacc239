"""Logical axis rules, mesh construction and the Partitioner (T5X_COMPAT §2.4, §2.5), and frozen weights restored
shard by shard onto a mesh.

Rule tables and their resolution run in this process; everything that needs a real mesh runs in
`multidevice_checks.py`: once on 8 simulated CPU devices, and once as two `jax.distributed` processes.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from types import SimpleNamespace

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import multidevice_checks
from prompt_tuning import prompts
from prompt_tuning.families import multitask
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import get_config
from prompt_tuning.models import t5 as t5_lib
from prompt_tuning.runtime import partitioning

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKS_SCRIPT = pathlib.Path(multidevice_checks.__file__)
REPLICATED = [("relpos_buckets", None), ("abspos_buckets", None), ("length", None), ("layers", None),
              ("stack", None), ("mlp_activations", None)]
MODEL_SHARDED = [("mlp", "model"), ("heads", "model"), ("kv", None), ("joined_kv", "model")]


# ---------------------------------------------------------------------------------------------------- rules
def test_standard_rules_default_table():
  assert partitioning.standard_logical_axis_rules() == tuple(
      [("batch", "data"), ("vocab", "model"), ("embed", None)] + MODEL_SHARDED + REPLICATED)


@pytest.mark.parametrize("dims, embed", [((2, 1), [("embed", "model")]), ((1, 2), [("embed", "data")]),
                                         ((2, 2), [("embed", "model"), ("embed", "data")])])
def test_standard_rules_2d_variants_put_embed_after_model_axes(dims, embed):
  rules = partitioning.standard_logical_axis_rules(*dims)
  assert rules == tuple([("batch", "data"), ("vocab", "model")] + MODEL_SHARDED + embed + REPLICATED)
  # Priority order: an (embed, mlp) kernel keeps 'model' on mlp; embed alone takes its 2-D mesh axis.
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P(embed[-1][1] if dims[1] == 2 else None, "model")
  assert nn.logical_to_mesh_axes(("embed",), rules) == P(embed[0][1])


def test_standard_rules_reject_unsupported_dims():
  with pytest.raises(ValueError, match="activation_partitioning_dims=3"):
    partitioning.standard_logical_axis_rules(3, 1)


def test_additional_rules_come_last():
  rules = partitioning.standard_logical_axis_rules(additional_rules=[("embed", "model"), ["prompt", None]])
  assert rules[-2:] == (("embed", "model"), ("prompt", None))
  assert nn.logical_to_mesh_axes(("embed",), rules) == P(None)  # the standard ('embed', None) wins


def test_prompt_rules():
  assert partitioning.prompt_logical_axis_rules() == (("prompt", None), ("prompt_embed", None))
  assert multitask.logical_axis_rules()[2:] == (("tasks", None), ("langs", None), ("prompt+embed", None))


def test_a_family_adds_its_rules_and_the_configured_ones_win():
  partitioner = partitioning.Partitioner(logical_axis_rules=(("tasks", "model"), ("batch", "data")))
  partitioner.add_logical_axis_rules(multitask.logical_axis_rules())
  assert partitioner.logical_axis_rules == (("tasks", "model"), ("batch", "data"), ("prompt", None),
                                            ("prompt_embed", None), ("langs", None), ("prompt+embed", None))


def test_default_rules_are_standard_plus_prompt():
  assert partitioning.Partitioner().logical_axis_rules == (partitioning.standard_logical_axis_rules()
                                                           + partitioning.prompt_logical_axis_rules())


def test_tiny_model_parameter_specs():
  cfg = get_config("tiny", dtype=jnp.float32, num_heads=2, head_dim=4, emb_dim=8, mlp_dim=16)
  abstract = t5_lib.abstract_variables(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(length=3))))
  specs = multidevice_checks.flat(partitioning.Partitioner(num_partitions=2).params_specs(abstract))
  assert len(specs) == len(jax.tree_util.tree_leaves(nn.meta.unbox(abstract)))
  for path, spec in specs.items():
    assert spec == multidevice_checks.expected_spec(path), path


# ----------------------------------------------------------------------------------------------------- mesh
def _fake_tpu_slice(bounds: tuple[int, int, int, int]) -> list[SimpleNamespace]:
  coords = [(x, y, z, c) for x in range(bounds[0]) for y in range(bounds[1]) for z in range(bounds[2])
            for c in range(bounds[3])]
  return [SimpleNamespace(id=i, coords=xyzc[:3], core_on_chip=xyzc[3]) for i, xyzc in enumerate(coords)]


@pytest.mark.parametrize("submesh, varying", [((1, 1, 1, 2), 3), ((2, 1, 1, 1), 0), ((1, 2, 1, 1), 1)])
def test_tpu_submesh_rows_are_physical_tiles(submesh, varying):
  grid = partitioning._tpu_tile_grid(_fake_tpu_slice((2, 2, 1, 2)), submesh)  # pylint: disable=protected-access
  assert grid.shape == (4, 2)
  assert sorted(d.id for d in grid.flat) == list(range(8))
  for a, b in grid:  # the two devices of a 'model' group differ only along the submesh's dimension
    pos_a, pos_b = (*a.coords, a.core_on_chip), (*b.coords, b.core_on_chip)
    assert [i for i in range(4) if pos_a[i] != pos_b[i]] == [varying]


def test_tpu_submesh_must_divide_slice():
  with pytest.raises(ValueError, match=r"model_parallel_submesh=\(3, 1, 1, 1\) must divide"):
    partitioning._tpu_tile_grid(_fake_tpu_slice((2, 2, 1, 2)), (3, 1, 1, 1))  # pylint: disable=protected-access


def test_submesh_must_be_four_positive_ints():
  with pytest.raises(ValueError, match=r"model_parallel_submesh=\(2, 2\) must be 4 positive ints"):
    partitioning.get_mesh(num_partitions=None, model_parallel_submesh=(2, 2))


# ------------------------------------------------------------------------------------------- configuration
def test_gin_wiring_of_prompt_runs():
  """As gin_configs/runs/prompt_*.gin: T5X names, rules from `standard_logical_axis_rules` + prompt rules."""
  with gin.unlock_config():
    gin.parse_config("""
        from __gin__ import dynamic_registration
        import prompt_tuning.runtime.partitioning as partitioning
        pt_test/partitioning.PjitPartitioner.num_partitions = 1
        pt_test/partitioning.PjitPartitioner.logical_axis_rules = @partitioning.standard_logical_axis_rules()
        pt_test/partitioning.standard_logical_axis_rules.additional_rules = @partitioning.prompt_logical_axis_rules()
    """)
  with gin.config_scope("pt_test"):
    partitioner = gin.get_configurable(partitioning.PjitPartitioner)()
  assert isinstance(partitioner, partitioning.Partitioner)
  assert partitioner.logical_axis_rules == partitioning.default_logical_axis_rules()
  assert dict(partitioner.mesh.shape) == {"data": jax.device_count(), "model": 1}


def test_gin_wiring_of_a_multi_slice_mesh():
  """T5X's `ici_mesh_shape` / `dcn_mesh_shape` bindings; `num_partitions` (set by the run gins) is ignored."""
  with gin.unlock_config():
    gin.parse_config("""
        from __gin__ import dynamic_registration
        import prompt_tuning.runtime.partitioning as partitioning
        pt_slices/partitioning.PjitPartitioner.num_partitions = 1
        pt_slices/partitioning.PjitPartitioner.ici_mesh_shape = (1, %s, 1)
        pt_slices/partitioning.PjitPartitioner.dcn_mesh_shape = (1, 1, 1)
    """ % jax.device_count())
  with gin.config_scope("pt_slices"):
    partitioner = gin.get_configurable(partitioning.PjitPartitioner)()
  assert dict(partitioner.mesh.shape) == {"replica": 1, "data": jax.device_count(), "model": 1}
  assert partitioner.data_partition_spec == P(("replica", "data"))
  assert dict(partitioner.logical_axis_rules)["batch"] == ("replica", "data")


def test_params_on_host_is_rejected():
  with pytest.raises(ValueError, match="params_on_devices=False"):
    partitioning.Partitioner(params_on_devices=False)


# --------------------------------------------------------------------------------------- several devices
def _env() -> dict[str, str]:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}  # XLA_FLAGS: conftest's


def _last_json_line(stdout: str, stderr: str) -> dict[str, str]:
  lines = stdout.strip().splitlines()
  assert lines, f"no output; stderr:\n{stderr[-3000:]}"
  return json.loads(lines[-1])


def _eight_devices() -> dict[str, str]:
  proc = subprocess.run([sys.executable, str(CHECKS_SCRIPT)], capture_output=True, text=True, timeout=300,
                        env=_env(), cwd=REPO_ROOT, check=False)
  return _last_json_line(proc.stdout, proc.stderr)


def _two_processes() -> list[dict[str, str]]:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, str(CHECKS_SCRIPT), str(i), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO_ROOT) for i in range(2)]
  try:
    return [_last_json_line(*p.communicate(timeout=300)) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _failures(results: dict[str, str]) -> str:
  return "\n".join(f"{name}:\n{outcome}" for name, outcome in results.items() if outcome != "ok")


@pytest.mark.slow
def test_eight_devices():
  """Every check of multidevice_checks.CHECKS in one 8-device process (one test: one process per session)."""
  results = _eight_devices()
  assert set(results) == set(multidevice_checks.CHECKS), sorted(results)
  assert not _failures(results), _failures(results)


@pytest.mark.slow
def test_two_processes():
  """Every check of multidevice_checks.MULTIHOST_CHECKS in each of two `jax.distributed` processes."""
  for process_id, results in enumerate(_two_processes()):
    assert set(results) == set(multidevice_checks.MULTIHOST_CHECKS), sorted(results)
    assert not _failures(results), f"process {process_id}:\n{_failures(results)}"
