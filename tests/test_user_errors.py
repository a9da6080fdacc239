"""Every mistake a user can make on the CLIs' command lines is one `error:` line on stderr (no traceback), names
the bad value and the fix, comes before any work (MODEL_DIR is never created) and exits with
`errors.EXIT_USER_ERROR`: each macro and flag (wrong type, out of range, missing keys, empty lists), each path kind
(missing, a file for a folder, unreadable, unwritable) and each file kind (not a .npy, wrong shape, NaN/Inf).
Then the other exit codes: the NaN stop, preemption, `infer`'s output folder and `diff_checkpoints`."""
from __future__ import annotations

import os
import errno
import pathlib
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from flax import traverse_util

from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli, run_in_process, write_tiny_t5x_checkpoint
from prompt_tuning import errors
from prompt_tuning.runtime.checkpoints import load_t5x_params, save_t5x_checkpoint

# Root reads and writes whatever the permission bits say: as root the locked paths are ones no user can use
# (/proc/self cannot hold a new folder; /proc/self/mem fails every read from offset 0).
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NEEDS_PROC = pytest.mark.skipif(IS_ROOT and not os.path.isdir("/proc/self"), reason="root without /proc/self")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
  """A frozen checkpoint and the bad paths and files the table points at, made once."""
  root = tmp_path_factory.mktemp("user_errors")
  ckpt = write_tiny_t5x_checkpoint(root / "pretrained")
  params = traverse_util.flatten_dict(load_t5x_params(str(ckpt)), sep="/")
  params["decoder/layers_0/mlp/wo/kernel"] = np.full_like(params["decoder/layers_0/mlp/wo/kernel"], np.nan)
  nan_ckpt = save_t5x_checkpoint(str(root / "nan_pretrained"), 3, traverse_util.unflatten_dict(params, sep="/"))
  paths = {"ckpt": ckpt, "nan_ckpt": pathlib.Path(nan_ckpt), "file": root / "a_file.txt", "empty": root / "empty",
           "locked_dir": root / "locked_dir", "locked_file": root / "locked.npy", "text": root / "prompt.txt",
           "pickle": root / "pickle.npy", "wrong_shape": root / "wrong_shape.npy", "flat": root / "flat.npy",
           "nan": root / "nan.npy", "inf": root / "inf.npy", "good": root / "good.npy", "out_used": root / "out_used"}
  paths["truncated"] = pathlib.Path(shutil.copytree(ckpt, root / "truncated" / ckpt.name))
  msgpack = paths["truncated"] / "checkpoint"
  msgpack.write_bytes(msgpack.read_bytes()[:msgpack.stat().st_size // 2])
  paths["file"].write_text("not a folder")
  paths["empty"].mkdir()
  if IS_ROOT:
    paths["locked_dir"], paths["locked_file"] = pathlib.Path("/proc/self"), pathlib.Path("/proc/self/mem")
  else:
    paths["locked_dir"].mkdir()
    np.save(paths["locked_file"], np.zeros((3, 4), np.float32))
  paths["text"].write_text("0.1 0.2 0.3\n")
  np.save(paths["pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
  np.save(paths["wrong_shape"], np.zeros((5, 4), np.float32))
  np.save(paths["flat"], np.zeros(12, np.float32))
  np.save(paths["nan"], np.array([[0.1, np.nan, 0.2, 0.3]] * 3, np.float32))
  np.save(paths["inf"], np.array([[0.1, np.inf, 0.2, 0.3]] * 3, np.float32))
  np.save(paths["good"], np.zeros((3, 4), np.float32))
  paths["out_used"].mkdir()
  (paths["out_used"] / "old-predict.jsonl-00000-of-00001").write_text("{}\n")
  if not IS_ROOT:
    os.chmod(paths["locked_dir"], 0o500)
    os.chmod(paths["locked_file"], 0o000)
  yield paths
  if not IS_ROOT:
    os.chmod(paths["locked_dir"], 0o700)
    os.chmod(paths["locked_file"], 0o600)


NO_EVALUATIONS = ["--gin.train_script.train.infer_eval_dataset_cfg=None",
                  "--gin.train_script.train.train_eval_dataset_cfg=None"]


def train_flags(model_dir: pathlib.Path, ckpt: pathlib.Path, *extra: str, init: str = "random_uniform") -> list[str]:
  return [*MODEL_FLAGS, f"--gin_file=prompts/{init}.gin", "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", "--gin.TRAIN_STEPS=5",
          "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=3", "--gin.EVAL_PERIOD=0", "--gin.DROPOUT_RATE=0.0", *extra]


def eval_flags(out: pathlib.Path, ckpt: pathlib.Path, prompt: pathlib.Path, *extra: str) -> list[str]:
  return [*MODEL_FLAGS, "--gin_file=runs/prompt_eval.gin", *TASK_FLAGS[:2], f"--gin.CHECKPOINT_PATH='{ckpt}'",
          f"--gin.PROMPT_FILE='{prompt}'", "--gin.PROMPT_LENGTH=3", f"--gin.EVAL_OUTPUT_DIR='{out}'",
          "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=4", *extra]


def infer_flags(out: pathlib.Path, ckpt: pathlib.Path, prompt: pathlib.Path, *extra: str) -> list[str]:
  return [*MODEL_FLAGS, "--gin_file=runs/prompt_infer.gin", *TASK_FLAGS, f"--gin.CHECKPOINT_PATH='{ckpt}'",
          f"--gin.PROMPT_FILE='{prompt}'", "--gin.PROMPT_LENGTH=3", f"--gin.INFER_OUTPUT_DIR='{out}'",
          "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=4", *extra]


# (case id, CLI, flags given the `files` and the run folder, what the line must contain). `{name}` in a flag is
# the path of `files[name]`; `{run}` the MODEL_DIR / output folder (never created when the check comes first).
LABELS = "--gin.CLASS_LABELS=['yes', 'no']"
CASES = [
    # Macros: wrong type, zero / negative, out of range.
    ("prompt_length_zero", "train", ["--gin.PROMPT_LENGTH=0"], "PROMPT_LENGTH=0 must be a positive integer"),
    ("prompt_length_string", "train", ["--gin.PROMPT_LENGTH='7'"], "PROMPT_LENGTH='7' (str) must be a positive"),
    ("train_steps_negative", "train", ["--gin.TRAIN_STEPS=-1"], "TRAIN_STEPS=-1 must be a positive integer"),
    ("train_steps_float", "train", ["--gin.TRAIN_STEPS=2.5"], "TRAIN_STEPS=2.5 must be a positive integer"),
    ("train_steps_relative_zero", "train", ["--gin.TRAIN_STEPS_RELATIVE=0"], "TRAIN_STEPS_RELATIVE=0 must be"),
    ("batch_size_zero", "train", ["--gin.BATCH_SIZE=0"], "BATCH_SIZE=0 must be a positive integer"),
    ("batch_size_bool", "train", ["--gin.BATCH_SIZE=True"], "BATCH_SIZE=True must be a positive integer"),
    ("learning_rate_zero", "train", ["--gin.LEARNING_RATE=0"], "LEARNING_RATE=0 must be a positive finite"),
    ("learning_rate_string", "train", ["--gin.LEARNING_RATE='fast'"], "LEARNING_RATE='fast' (str) must be"),
    ("learning_rate_nan", "train", ["--gin.LEARNING_RATE=float('nan')"],
     "Gin cannot parse \"LEARNING_RATE = float('nan')\" (Failed to parse token 'float')"),
    ("eval_period_negative", "train", ["--gin.EVAL_PERIOD=-5"], "EVAL_PERIOD=-5 must be an integer >= 0"),
    ("save_period_negative", "train", ["--gin.SAVE_PERIOD=-1"], "SAVE_PERIOD=-1 must be an integer >= 0"),
    ("keep_checkpoints_zero", "train", ["--gin.KEEP_CHECKPOINTS=0"], "KEEP_CHECKPOINTS=0 must be a positive"),
    ("stats_period_zero", "train", ["--gin.STATS_PERIOD=0"], "STATS_PERIOD=0 must be a positive integer"),
    ("eval_steps_zero", "train", ["--gin.EVAL_STEPS=0"], "EVAL_STEPS=0 must be a positive integer"),
    ("microbatches_zero", "train", ["--gin.NUM_MICROBATCHES=0"], "NUM_MICROBATCHES=0 must be a positive"),
    ("partitions_zero", "train", ["--gin.NUM_PARTITIONS=0"], "NUM_PARTITIONS=0 must be a positive integer"),
    ("dropout_above_one", "train", ["--gin.DROPOUT_RATE=1.5"], "DROPOUT_RATE=1.5 must be a number in [0, 1)"),
    ("seed_negative", "train", ["--gin.RANDOM_SEED=-1"], "RANDOM_SEED=-1 must be an integer >= 0"),
    ("use_cached_string", "train", ["--gin.USE_CACHED_TASKS='yes'"], "USE_CACHED_TASKS='yes' (str) must be True"),
    ("task_name_empty", "train", ["--gin.MIXTURE_OR_TASK_NAME=''"], "MIXTURE_OR_TASK_NAME='' (str) must be a non"),
    ("task_unknown", "train", ["--gin.MIXTURE_OR_TASK_NAME='cli_test_tsak'"], "Close names: ['cli_test_task'"),
    ("combination_unknown", "train", ["--gin.PROMPT_COMBINATION='suffix'"], "PROMPT_COMBINATION='suffix' (str)"),
    ("dtype_unknown", "train", ["--gin.ACTIVATION_DTYPE='float8'"], "ACTIVATION_DTYPE='float8' (str) must be one"),
    # TASK_FEATURE_LENGTHS: missing keys, bad lengths, empty, wrong type.
    ("lengths_missing_key", "train", ["--gin.TASK_FEATURE_LENGTHS={'inputs': 12}"],
     "TASK_FEATURE_LENGTHS={'inputs': 12} lacks ['targets'], feature(s) of 'cli_test_task'"),
    ("lengths_misspelled_key", "train", ["--gin.TASK_FEATURE_LENGTHS={'input': 12, 'targets': 4}"],
     "lacks ['inputs'], feature(s) of 'cli_test_task' (['input'] are not features of it)"),
    ("lengths_zero", "train", ["--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 0}"],
     "must be a dict of feature name -> positive integer length"),
    ("lengths_empty", "train", ["--gin.TASK_FEATURE_LENGTHS={}"], "TASK_FEATURE_LENGTHS={} (dict) must be a dict"),
    ("lengths_list", "train", ["--gin.TASK_FEATURE_LENGTHS=[12, 4]"], "TASK_FEATURE_LENGTHS=[12, 4] (list) must"),
    # Lists and initialisers: an empty label list, an empty label, a checkpoint the initialiser needs.
    ("class_labels_empty", "train:from_class_labels", ["--gin.CLASS_LABELS=[]"], "CLASS_LABELS=[] (list) must be"),
    ("class_label_blank", "train:from_class_labels", ["--gin.CLASS_LABELS=['yes', '']"], "CLASS_LABELS=['yes', '']"),
    ("class_labels_string", "train:from_class_labels", ["--gin.CLASS_LABELS='yes'"], "CLASS_LABELS='yes' (str)"),
    ("init_without_checkpoint", "train:from_class_labels", [LABELS, "--gin.INITIAL_CHECKPOINT_PATH=None"],
     "reads the embedding table from INITIAL_CHECKPOINT_PATH, which is None"),
    ("prompt_text_empty", "train:from_string", ["--gin.PROMPT_TEXT=''"], "PROMPT_TEXT='' (str) must be a non-empty"),
    # Gin itself: a misspelled macro, an unparsable value, an unknown parameter, a missing required macro.
    ("macro_misspelled", "train", ["--gin.PROMT_LENGTH=7"],
     "--gin.PROMT_LENGTH=... sets a macro that no loaded gin file or configurable uses; did you mean PROMPT_LENGTH"),
    ("macro_misspelled_bindings", "train", ["--gin_bindings=BATCH_SIZ = 4"], "did you mean BATCH_SIZE"),
    # A macro other gin files read but these do not: CLASS_LABELS with a random initialiser, training to eval.
    ("macro_known_unread", "train", [LABELS], "--gin.CLASS_LABELS=... sets a macro that the gin files loaded here "
     "do not read; it is read by prompts/from_class_labels.gin: drop the binding, or add the --gin_file that reads "
     "it."),
    ("macro_known_unread_eval", "eval", ["--gin.TRAIN_STEPS=5"],
     "--gin.TRAIN_STEPS=... sets a macro that the gin files loaded here do not read; it is read by runs/"),
    ("value_unquoted", "train", ["--gin.MODEL_DIR=/tmp/run"],
     "Gin cannot parse 'MODEL_DIR = /tmp/run' (Unable to parse value.): values are Python literals (strings need"),
    ("parameter_unknown", "train", ["--gin.prompts.Prompt.lenght=3"], "lenght"),
    ("macro_required", "train", ["--gin.MODEL_DIR=%gin.REQUIRED"], "Missing required macro MODEL_DIR"),
    ("gin_file_missing", "train", ["--gin_file=runs/nope.gin"], "runs/nope.gin"),
    # Paths: missing, a file for a folder, unreadable, unwritable.
    ("model_dir_is_file", "train", ["--gin.MODEL_DIR='{file}'"], "is a file, not a folder"),
    ("model_dir_under_file", "train", ["--gin.MODEL_DIR='{file}/run'"], "cannot be created"),
    ("model_dir_read_only_mount", "train", ["--gin.MODEL_DIR='/proc/prompt_tuning_run'"], "is not writable"),
    ("model_dir_unwritable", "train", ["--gin.MODEL_DIR='{locked_dir}/run'"], "is not writable"),
    ("model_dir_not_a_string", "train", ["--gin.MODEL_DIR=7"], "MODEL_DIR=7 must be a path"),
    ("checkpoint_missing", "train", ["--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/checkpoint_1'"],
     "INITIAL_CHECKPOINT_PATH='/nonexistent/checkpoint_1': No checkpoint at"),
    ("checkpoint_empty_dir", "train", ["--gin.INITIAL_CHECKPOINT_PATH='{empty}'"], "the dir is empty"),
    ("checkpoint_not_a_checkpoint", "train", ["--gin.INITIAL_CHECKPOINT_PATH='{file}'"],
     "is not a checkpoint in any format understood here"),
    ("checkpoint_unreadable", "train", ["--gin.INITIAL_CHECKPOINT_PATH='{locked_file}'"], "cannot be read"),
    ("checkpoint_truncated", "train", ["--gin.INITIAL_CHECKPOINT_PATH='{truncated}'"],
     "cannot be read (ValueError"),
    ("checkpoint_nan_weights", "train", ["--gin.INITIAL_CHECKPOINT_PATH='{nan_ckpt}'"],
     "holds NaN/Inf in 1 variable(s): decoder/layers_0/mlp/wo/kernel (32 values)"),
    # Files: missing, a folder, not a .npy, a pickle, wrong shape, not 2-D, NaN, Inf, unreadable.
    ("prompt_file_missing", "train:from_file", ["--gin.PROMPT_FILE='/nonexistent/prompt.npy'"], "does not exist"),
    ("prompt_file_is_dir", "train:from_file", ["--gin.PROMPT_FILE='{empty}'"], "is a folder; give the .npy file"),
    ("prompt_file_text", "train:from_file", ["--gin.PROMPT_FILE='{text}'"], "is not a readable .npy file"),
    ("prompt_file_pickle", "train:from_file", ["--gin.PROMPT_FILE='{pickle}'"], "is not a readable .npy file"),
    ("prompt_file_wrong_shape", "train:from_file", ["--gin.PROMPT_FILE='{wrong_shape}'"],
     "holds a prompt of shape (5, 4), which does not fit PROMPT_LENGTH=3; set --gin.PROMPT_LENGTH=5"),
    ("prompt_file_1d", "train:from_file", ["--gin.PROMPT_FILE='{flat}'"], "shape (12,); it must be 2-D"),
    ("prompt_file_nan", "train:from_file", ["--gin.PROMPT_FILE='{nan}'"], "holds 3 NaN/Inf value(s) of 12"),
    ("prompt_file_inf", "train:from_file", ["--gin.PROMPT_FILE='{inf}'"], "holds 3 NaN/Inf value(s) of 12"),
    ("prompt_file_unreadable", "train:from_file", ["--gin.PROMPT_FILE='{locked_file}'"], "cannot be read"),
    ("embedding_file_nan", "train:from_sampled_vocab_numpy", ["--gin.EMBEDDING_FILE='{nan}'"],
     "EMBEDDING_FILE='{nan}' holds 3 NaN/Inf"),
    # Flags.
    ("flag_unknown", "train", ["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    ("flag_wrong_type", "train", ["--process_count=two"], "process_count"),
    ("flag_below_bound", "train", ["--process_count=0"], "process_count"),
    ("flag_index_too_large", "train", ["--process_count=2", "--process_index=2"],
     "--process_index=2 must be below --process_count=2"),
    ("flag_coordinator", "train", ["--coordinator_address=nohost"], "is not host:port"),
    ("flag_tfds_dir_missing", "train", ["--tfds_data_dir=/nonexistent/tfds"], "--tfds_data_dir='/nonexistent/tfds'"),
    ("flag_tfds_dir_file", "train", ["--tfds_data_dir={file}"], "is a file"),
    ("flag_search_path", "train", ["--gin_search_paths=/nonexistent/gin"], "is not a folder"),
    # Eval and infer: their own folders and checkpoints, the infer mode and shards.
    ("eval_output_is_file", "eval", ["--gin.EVAL_OUTPUT_DIR='{file}'"], "EVAL_OUTPUT_DIR='{file}' is a file"),
    ("eval_checkpoint_missing", "eval", ["--gin.CHECKPOINT_PATH='/nonexistent/ckpt'"], "CHECKPOINT_PATH='/nonex"),
    ("eval_batch_zero", "eval", ["--gin.BATCH_SIZE=0"], "BATCH_SIZE=0 must be a positive integer"),
    ("eval_prompt_nan", "eval", ["--gin.PROMPT_FILE='{nan}'"], "PROMPT_FILE='{nan}' holds 3 NaN/Inf"),
    ("infer_output_used", "infer", ["--gin.INFER_OUTPUT_DIR='{out_used}'"],
     "already holds old-predict.jsonl-00000-of-00001; give an empty or new folder, or pass --overwrite"),
    ("infer_output_is_file", "infer", ["--gin.INFER_OUTPUT_DIR='{file}'"], "is a file, not a folder"),
    ("infer_shard_negative", "infer", ["--shard_id=-1"], "shard_id"),
    ("infer_shard_too_large", "infer", ["--shard_id=2", "--gin.infer_script.infer.num_shards=2"],
     "--shard_id=2 must be in [0, num_shards=2)"),
    ("infer_mode_unknown", "infer", ["--gin.infer_script.infer.mode='predicts'"], "mode='predicts' is not one"),
]
SKIPS = {"model_dir_unwritable": NEEDS_PROC, "checkpoint_unreadable": NEEDS_PROC, "prompt_file_unreadable": NEEDS_PROC,
         "model_dir_read_only_mount": pytest.mark.skipif(not os.path.isdir("/proc"), reason="no /proc here")}


FOUND_AT_LOAD = {"checkpoint_nan_weights", "checkpoint_truncated"}


def _fill(text: str, paths: dict[str, pathlib.Path]) -> str:
  for name, path in paths.items():
    text = text.replace("{" + name + "}", str(path))
  return text


def _flags(cli: str, extra: list[str], paths: dict[str, pathlib.Path], run: pathlib.Path) -> list[str]:
  module, _, init = cli.partition(":")
  if module == "train":
    init_flags = {"from_class_labels": [LABELS], "from_file": [f"--gin.PROMPT_FILE='{paths['good']}'"],
                  "from_string": ["--gin.PROMPT_TEXT='is it'"],
                  "from_sampled_vocab_numpy": [f"--gin.EMBEDDING_FILE='{paths['good']}'"]}.get(init, [])
    return train_flags(run, paths["ckpt"], *init_flags, *extra, init=init or "random_uniform")
  maker = eval_flags if module == "eval" else infer_flags
  return maker(run, paths["ckpt"], paths["good"], *extra)


@pytest.mark.parametrize("case,cli,extra,message",
                         [pytest.param(*c, id=c[0], marks=SKIPS.get(c[0], ())) for c in CASES])
def test_user_error_is_one_line_before_any_work(tmp_path, files, case, cli, extra, message):
  run = tmp_path / "run"
  flags = [_fill(f, files) for f in _flags(cli, extra, files, run)]
  proc = run_cli(cli.partition(":")[0], flags, tmp_path, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == errors.EXIT_USER_ERROR, (case, proc.returncode, proc.stderr[-3000:])
  assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  if case in FOUND_AT_LOAD:  # met while reading the weights: only progress logs come before the error line
    assert all(re.match(r"[IWEF]\d{4} ", line) for line in lines[:-1]), proc.stderr[-3000:]
  else:  # checked before any work: nothing else is on stderr
    assert len(lines) == 1, proc.stderr[-3000:]
  assert _fill(message, files) in lines[-1], lines[-1]
  if case in FOUND_AT_LOAD:  # seen when the weights are read, before anything compiles or is saved
    assert not list(run.glob("checkpoint_*")), f"{case}: a checkpoint was written"
  else:
    assert not run.exists(), f"{case}: work started before the error"


def test_verbose_and_env_show_the_traceback(tmp_path, files, monkeypatch):
  flags = train_flags(tmp_path / "run", files["ckpt"], "--gin.BATCH_SIZE=0")
  quiet = run_cli("train", flags, tmp_path, check=False)
  loud = run_cli("train", [*flags, "--verbose"], tmp_path, check=False)
  monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
  env = run_cli("train", flags, tmp_path, check=False)
  assert "Traceback" not in quiet.stderr
  for proc in (loud, env):
    assert proc.returncode == errors.EXIT_USER_ERROR and "Traceback" in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == quiet.stderr.strip().splitlines()[-1]


def test_full_disk_is_one_line_naming_the_fix(capsys):
  """A full disk or a read-only mount met mid-run (a save) is reported like a user error, not as a crash."""
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as stop, cli.reported_errors():
    raise OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint_7")
  assert stop.value.code == errors.EXIT_USER_ERROR
  line = capsys.readouterr().err.strip()
  assert line.startswith("error: No space left on device (/data/run/checkpoint_7): free space") and "\n" not in line
  with pytest.raises(OSError), cli.reported_errors():  # anything else stays a crash with its traceback
    raise OSError(errno.EIO, "Input/output error")


def test_diff_checkpoints_exit_codes(tmp_path, files):
  """0 the same, 1 different, 2 an error (a missing path, a bad argument, an unreadable checkpoint)."""
  ckpt = str(files["ckpt"])
  assert run_cli("scripts.diff_checkpoints", [ckpt, ckpt], tmp_path, check=False).returncode == 0
  assert run_cli("scripts.diff_checkpoints", [ckpt, str(files["nan_ckpt"])], tmp_path, check=False).returncode == 1
  for args in ([ckpt, "/nonexistent/ckpt"], [ckpt, ckpt, "--frac=0"], [ckpt, str(files["file"])], [ckpt],
               [ckpt, ckpt, "--frac=half"]):
    proc = run_cli("scripts.diff_checkpoints", args, tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.returncode, proc.stderr[-2000:])


def test_nan_stop_exits_3_and_names_the_newest_finite_checkpoint(tmp_path, files):
  model_dir = tmp_path / "run"
  proc = run_cli("train", train_flags(model_dir, files["ckpt"], "--gin.TRAIN_STEPS=9", "--gin.LEARNING_RATE=1e39",
                                      "--gin.SAVE_PERIOD=2", "--gin.STATS_PERIOD=2", *NO_EVALUATIONS), tmp_path,
                 check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == errors.EXIT_NONFINITE and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert last.startswith("error: The loss became NaN/Inf at step") and "checkpoint_3" in last, last
  saved = sorted(p.name for p in model_dir.glob("checkpoint_*"))
  assert saved == ["checkpoint_3"], saved  # the start was saved; nothing after the first NaN
  assert np.isfinite(np.load(model_dir / "numpy_checkpoints/checkpoint_3/encoder.prompt.prompt.prompt")).all()


@pytest.mark.skipif(os.environ.get("PT_TEST_CLI_SUBPROCESS") == "1", reason="signals this test process itself")
def test_preempted_run_saves_and_exits_75(tmp_path, files):
  """SIGTERM mid-run (as a preempted TPU VM gets): the run saves, stops and exits with the documented code."""
  before = signal.getsignal(signal.SIGTERM)

  def preempt_when_training():  # the trainer installs its handler when the loop starts
    deadline = time.time() + 120
    while signal.getsignal(signal.SIGTERM) is before and time.time() < deadline:
      time.sleep(0.005)
    if time.time() < deadline:
      os.kill(os.getpid(), signal.SIGTERM)

  model_dir = tmp_path / "run"
  thread = threading.Thread(target=preempt_when_training, daemon=True)
  thread.start()
  try:
    proc = run_in_process("train", train_flags(model_dir, files["ckpt"], "--gin.TRAIN_STEPS=100000",
                                               "--gin.SAVE_PERIOD=100000", *NO_EVALUATIONS), tmp_path)
  finally:
    thread.join()
    signal.signal(signal.SIGTERM, before)
  assert proc.returncode == errors.EXIT_PREEMPTED, proc.stderr[-3000:]
  kept = [p.name for p in model_dir.glob("checkpoint_*")]  # KEEP_CHECKPOINTS=1: the preemption save
  exported = sorted(int(p.name.split("_")[1]) for p in (model_dir / "numpy_checkpoints").glob("checkpoint_*")
                    if "." not in p.name)
  assert len(exported) == 2 and exported[0] == 3 and 3 < exported[1] < 100000, exported  # start, preemption
  assert kept == [f"checkpoint_{exported[1]}"], kept


SCRIPT_MISTAKES = [  # (script, arguments, the start of its one line)
    ("extract_variable", ["--checkpoint_dir=/nonexistent/run", "--variable_path=target/x", "--output_path=x.npy"],
     "error: No checkpoint at '/nonexistent/run'"),
    ("find_module", ["no_such_module_xyz"], "error: No module named 'no_such_module_xyz'"),
    ("summarize_run", ["/nonexistent/run"], "error: No evaluation results under /nonexistent/run"),
    ("export_peft", ["--prompt_file=/nonexistent/p.npy", "--output_dir=out", "--base_model=t5"],
     "error: Prompt/embedding file '/nonexistent/p.npy' does not exist"),
    ("subsample_vocab", ["--checkpoint_dir=/nonexistent/run", "--output_path=x.npy"],
     "error: No checkpoint at '/nonexistent/run'"),
    ("recreate_checkpoint", ["--model_dir=/nonexistent/run", "--step=3"],
     "error: No checkpoint_<step> in '/nonexistent/run'"),
    ("interpret_prompt", ["--checkpoint=/nonexistent/run", "--prompt_path=/nonexistent/p.npy"],
     "error: No checkpoint at '/nonexistent/run'"),
    ("recycle_prompt", ["--source_model=/nonexistent/a", "--target_model=/nonexistent/b",
                        "--prompt_path=/nonexistent/p.npy", "--output_path=x.npy"],
     "error: No checkpoint at '/nonexistent/a'"),
]


@pytest.mark.parametrize("script,args,start", SCRIPT_MISTAKES, ids=[case[0] for case in SCRIPT_MISTAKES])
def test_scripts_report_a_user_error_as_one_line_with_exit_code_2(tmp_path, script, args, start):
  """The scripts share the CLIs' exit codes: a bad argument is 2 with one line, never 1 (a crash)."""
  proc = run_cli(f"scripts.{script}", args, tmp_path, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == errors.EXIT_USER_ERROR and "Traceback" not in proc.stderr, (proc.returncode,
                                                                                        proc.stderr[-2000:])
  named = "no_such_module_xyz" if script == "find_module" else "/nonexistent/"  # the bad value
  assert lines[-1].startswith(start) and named in lines[-1], lines[-1]
  assert not list(tmp_path.iterdir()), "a file was written before the error"
