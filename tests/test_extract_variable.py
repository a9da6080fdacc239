"""`python -m prompt_tuning.scripts.extract_variable`: one checkpoint variable to .npy, as the reference's script."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from cli_utils import run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.runtime.checkpoints import load_t5x_params


def test_extracts_one_variable_of_a_t5x_checkpoint(tmp_path):
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  want = load_t5x_params(str(ckpt))["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  out = tmp_path / "out" / "wo.npy"
  proc = run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}",
                                              "--variable_path=target/encoder/layers_0/mlp/wo/kernel"], tmp_path)
  assert "target/encoder/layers_0/mlp/wo/kernel" in proc.stdout
  got = np.load(out)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  # Our parameter path (no 'target/') and a bfloat16 copy.
  run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}", "--restore_dtype=bfloat16",
                                       "--variable_path=encoder/layers_0/mlp/wo/kernel"], tmp_path)
  stored = np.load(out)  # numpy has no bfloat16: the file holds 2-byte records, viewed back with ml_dtypes
  np.testing.assert_array_equal(stored.view(ml_dtypes.bfloat16), np.asarray(want).astype(ml_dtypes.bfloat16))
  bad = run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}",
                                             "--variable_path=target/encoder/nope"], tmp_path, check=False)
  assert bad.returncode != 0 and "nope" in bad.stderr.strip().splitlines()[-1], bad.stderr[-2000:]
