"""Zero-shot cross-lingual sweeps: the mT5 XNLI / PAWS-X specs' Cloud TPU dry runs (prompt tuning, model tuning
and factorised language x task prompts, each size), their report (every language at the English-selected step,
with the average over languages), and the micro spec on the two-language demo world with its tasks."""
from __future__ import annotations

import json
import pathlib
import shlex

import gin
import pytest
import seqio

from cli_utils import tpu_dry_run
from prompt_tuning import gin_utils
from prompt_tuning.data import demo_bilingual, demo_corpus, multilingual
from prompt_tuning.launch import tpu
from prompt_tuning.sweeps import backends
from prompt_tuning.sweeps import cli as sweeps_cli
from prompt_tuning.sweeps.spec import Run, Spec

SPECS = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning" / "sweeps" / "specs"
MT5 = {"mt5_xnli_zeroshot": multilingual.XNLI_LANGUAGES, "mt5_pawsx_zeroshot": multilingual.PAWSX_LANGUAGES}
SIZES = ("small", "base", "large", "xl", "xxl")


def flag_values(flags) -> dict[str, str]:
  return dict(f[len("--gin."):].split("=", 1) for f in flags if f.startswith("--gin."))


def trained_tasks(name: str) -> set[str]:
  trained = seqio.get_mixture_or_task(name)
  return {t.name for t in getattr(trained, "tasks", [trained])}


@pytest.mark.parametrize("name", MT5)
def test_mt5_spec_dry_run_prints_every_cloud_tpu_command(name, tmp_path, capsys):
  path = str(SPECS / f"{name}.json")
  lines = [shlex.split(l) for l in tpu_dry_run(path, tmp_path, capsys)]
  spec = Spec.load(path, output_dir=str(tmp_path))
  assert len(lines) == len(spec.commands()) == len(SIZES) * 3 * 3  # (PT, MT, factorised) x 3 seeds per size
  assert all(l[:5] == [*tpu.GCLOUD_TPU, "ssh"] and "--worker=all" in l for l in lines)
  assert sorted(backends.tpu_argv(spec, c) for c in spec.commands()) == sorted(lines)
  assert {r.size for r in spec.runs()} == set(SIZES)
  languages = MT5[name]
  task = name.split("_")[1]
  for method in ("prompt_tuning", "model_tuning", "factorised_prompts"):
    spec_task = task if method != "factorised_prompts" else f"{task}_factorised"
    run = Run(spec_task, "xl", method, 0, *((100, "from_class_labels") if method == "prompt_tuning" else ()))
    command = spec.command(run)
    files = [f for f in command.flags if f.startswith("--gin_file=")]
    assert "--gin_file=sweeps/mt5_vocab.gin" in files  # mT5's vocabulary on every run
    assert any("mt5_xl/checkpoint_1000000" in f for f in command.flags)
    # Each language is evaluated by a task of the mixture the run trains on, and only English trains.
    mixture = flag_values(command.flags)["MIXTURE_OR_TASK_NAME"].strip("'")
    evals = {e.name: e.task_name for e in spec.evals(run)}
    assert set(languages) <= set(evals) and set(evals.values()) <= trained_tasks(mixture)
    train = [t for t in seqio.get_mixture_or_task(mixture).tasks if "train" in t.splits and "mc4" not in t.name]
    assert [multilingual.language_of(t.name) for t in train] == ["en"]
  assert spec.raw["benchmark"]["tasks"] == list(languages)


def test_factorised_mt5_command_parses_into_language_and_task_prompts():
  spec = Spec.load(SPECS / "mt5_xnli_zeroshot.json")
  files, run_gin, bindings = spec.train_config(Run("xnli_factorised", "small", "factorised_prompts", 0))
  assert "families/multilingual.gin" in files and run_gin == "runs/prompt_finetune.gin"
  try:
    # The model and family gin files with the run's bindings (the run gin names the train CLI's own function).
    gin_utils.parse_gin(files, [f"{k} = {v!r}" for k, v in bindings.items() if v is not None])
    assert gin.query_parameter("%NUM_LANGS") == len(multilingual.LANGUAGES)
    assert gin.query_parameter("%NUM_TASKS") == len(multilingual.TASK_INDEX)
    assert gin.query_parameter("%SENTINEL_VOCAB_SIZE") == 250_100  # mT5's sentinels, not T5's 32,100
    assert gin.query_parameter("%NUM_EMBEDDINGS") == 250_112
    assert gin.query_parameter("multitask.MultiTaskInputs.lang_source") == "sentinel"
  finally:
    gin.clear_config(clear_constants=True)


def _write_metrics(folder: pathlib.Path, task_name: str, lines: list[dict]) -> None:
  folder = folder / "inference_eval"
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{task_name}-metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_report_has_every_language_at_the_english_step_and_their_average(tmp_path, capsys):
  raw = json.loads((SPECS / "mt5_pawsx_zeroshot.json").read_text())
  raw["sizes"] = {"small": {**raw["sizes"]["small"], "num_params": 300_000_000}}
  raw["defaults"]["seeds"] = [0]
  spec = Spec(raw, output_dir=str(tmp_path))
  # English is best at step 2000; every other language is better at step 1000, which must not be picked.
  # At step 2000 language i of de, en, es, fr, ja, ko, zh scores 70 + i (en: 71): mean 73.0. Model tuning +10.
  for run in spec.runs():
    offset = {"prompt_tuning": 0.0, "model_tuning": 10.0, "factorised_prompts": 5.0}[run.method]
    for e in spec.evals(run):
      i = multilingual.PAWSX_LANGUAGES.index(e.name) if e.name != "all_langs" else 0
      at_2000 = 70.0 + i + offset
      at_1000 = at_2000 - 5 if e.name == "en" else at_2000 + 5
      _write_metrics(tmp_path / run.run_id, e.task_name, [{"step": 1000, "accuracy": at_1000},
                                                          {"step": 2000, "accuracy": at_2000}])
  restricted = tmp_path / "spec.json"  # the shipped spec, on one size and seed
  restricted.write_text(json.dumps(raw))
  assert sweeps_cli.main(["collect", str(restricted), "--output_dir", str(tmp_path), "--report=markdown"]) == 0
  report = (tmp_path / "results.md").read_text()
  assert "| small | 73.0 ± 0.0 | 83.0 ± 0.0 | 78.0 ± 0.0 |" in report  # PT, MT, factorised: mean over 7
  assert "| small | pawsx | ja | accuracy | 74.0 ± 0.0 | 84.0 ± 0.0 | – |" in report  # step 2000's, not 1000's
  assert "| small | pawsx_factorised | zh | accuracy | – | – | 81.0 ± 0.0 |" in report
  capsys.readouterr()


# ------------------------------------------------------------------------------------------ micro (demo world)
def test_language_b_is_the_same_world_in_other_words():
  lexicon = demo_corpus.lexicon()
  own = set(demo_corpus.vocabulary_words())
  assert len(set(lexicon.values())) == len(lexicon) == len(own)
  assert {w for w, b in lexicon.items() if w == b} == set(demo_corpus.SHARED_WORDS)
  assert not (set(lexicon.values()) - demo_corpus.SHARED_WORDS) & own
  text = "ben hates the red lamp . he feels negative about the lamp ."
  assert demo_corpus.translate(text, "a") == text
  words = demo_corpus.translate("ben hates the red lamp . ben feels negative about the lamp .", "b").split(" ")
  assert words[0] == "ben" and words[5] == "." and words[8] == "negative" and words[1] == lexicon["hates"]
  assert words[2] == words[10] == lexicon["the"]
  with pytest.raises(ValueError, match="must be one of"):
    demo_corpus.translate(text, "c")


def _texts(name: str, split: str = "validation", num: int | None = None) -> list[dict]:
  # seed: the preprocessors' random choices (prefix_lm's cut point) are fixed, so the texts are the same every run.
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split, shuffle=False, seed=0,
                                                   try_in_mem_cache=False)
  return list(ds.take(num or -1).as_numpy_iterator())


def test_bilingual_demo_tasks_share_examples_and_labels_across_languages():
  a, b = _texts("demo_bilingual_sentiment_a", num=20), _texts("demo_bilingual_sentiment_b_zeroshot", num=20)
  for x, y in zip(a, b):
    assert demo_corpus.translate(x["inputs_pretokenized"].decode(), "b") == y["inputs_pretokenized"].decode()
    assert x["targets_pretokenized"] == y["targets_pretokenized"]
    assert 2 not in x["inputs"].tolist() + y["inputs"].tolist()  # no unknown word in either language
  assert demo_bilingual.VOCABULARY.vocab_size == demo_bilingual.VOCAB_SIZE <= demo_bilingual.NUM_EMBEDDINGS
  pretrain = [demo_bilingual.VOCABULARY.decode(ex["inputs"].tolist() + ex["targets"].tolist())
              for ex in _texts("demo_bilingual_pretrain_prefix_lm", "validation", 4)]
  own = set(demo_corpus.vocabulary_words())
  assert [all(w in own for w in t.split()) for t in pretrain] == [True, False, True, False]  # a, b, a, b
  size = demo_bilingual.VOCAB_SIZE
  factorised = _texts("demo_bilingual_lang_task_sentiment_b_zeroshot", num=1)[0]
  assert factorised["inputs"][:2].tolist() == [size - 1 - 1, size - 1 - 0]  # language b, the sentiment task
  assert factorised["inputs"][2:].tolist() == b[0]["inputs"].tolist()
  lm = _texts("demo_bilingual_lang_task_lm_a", "validation", 1)[0]
  assert lm["inputs"][:2].tolist() == [size - 1 - 0, size - 1 - 1]  # language a, the LM task


def test_micro_spec_trains_on_a_and_evaluates_b_zero_shot(tmp_path, capsys):
  path = str(SPECS / "micro_cross_lingual.json")
  assert sweeps_cli.main(["run", path, "--dry-run", "--output_dir", str(tmp_path)]) == 0
  lines = [shlex.split(l) for l in capsys.readouterr().out.splitlines()]
  spec = Spec.load(path, output_dir=str(tmp_path))
  assert len(lines) == len(spec.commands()) == 1 + 2 + 1 + 1  # pretraining, MT + PT, factorised, PT in b
  assert lines[0] == backends.local_argv(spec.pretrain_commands()[0])
  for name, task in spec.tasks.items():
    evals = {e["name"] for e in task.get("evals", {"": task}).values()}
    assert evals <= trained_tasks(task["name"]), name
  factorised = flag_values(spec.command(Run("sentiment_factorised", "m", "factorised_prompts", 0)).flags)
  assert int(factorised["SENTINEL_VOCAB_SIZE"]) == demo_bilingual.VOCAB_SIZE
