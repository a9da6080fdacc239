"""A small synthetic shopping world and the text generated from it (pure Python, seeded, deterministic).

People buy items; items have colours, sizes and qualities that are either good or bad, and people's verbs
and feelings follow that quality. Two kinds of text come out of it:

* pretraining documents (`pretraining_documents`): a few sentences, mostly about one person and one item.
  The label words `positive` / `negative` occur only inside the phrase "{name} feels {label} about the
  {item}", so a model pretrained on them can emit the words and learns which qualities and verbs go with
  which, but never sees a text followed by its sentiment label alone;
* labelled texts, balanced between two classes, each from one half of the world's sentiment words (`half`):
  reviews (`reviews`: a quality, an opinion or both; label `LABELS[label]`), quality statements
  (`quality_reviews`: what would a buyer do, `OPINION_LABELS[label]`), stories (`stories`: reviews in the
  pretraining documents' sentence patterns, which training reviews never use: a shifted domain) and choices
  (`choices`: two items of opposite qualities and the one a person bought; label: the bought item's polarity).

Every string is lower case, words and punctuation separated by single spaces.

A second language renders the same world (`translate(text, "b")`): every word but the names, the full stop and
the label words `positive` / `negative` is replaced by a made-up word of two or three syllables ("lamp" ->
a word such as "kuvo"), in the same word order. The kept words are what the two languages share, as names,
numbers and punctuation are shared between real languages written in one script.
"""
from __future__ import annotations

import functools
import random
from typing import Callable

NAMES = ("anna", "ben", "carla", "dev", "ella", "finn", "gina", "hugo", "iris", "jack", "kim", "leo",
         "mia", "nora", "omar", "pia")
ITEMS = ("lamp", "chair", "kettle", "phone", "jacket", "bike", "clock", "desk", "mug", "radio", "sofa",
         "camera", "tent", "scarf", "fan", "oven")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "grey", "pink")
SIZES = ("small", "large", "round", "heavy", "light", "new", "tiny", "tall")
COUNTS = ("two", "three", "four", "five", "six")
PLACES = ("market", "shop", "station", "park", "mall")
# Qualities and verbs by polarity: index 0 bad, index 1 good (as `LABELS`).
QUALITIES = (
    ("flimsy", "broken", "noisy", "dull", "ugly", "leaky", "shaky", "faulty", "clumsy", "awful", "rusty",
     "sticky"),
    ("sturdy", "comfy", "bright", "reliable", "lovely", "quiet", "handy", "solid", "smooth", "elegant",
     "superb", "clever"),
)
VERBS = (("hates", "dislikes", "returned", "regrets", "avoids"),
         ("loves", "likes", "enjoys", "praises", "recommends"))
LABELS = ("negative", "positive")
OPINION_LABELS = (VERBS[0][0], VERBS[1][0])  # "hates", "loves": what a buyer does about a quality
LABEL_FRAME = ("feels", "about the")  # the only context label words appear in during pretraining
_FUNCTION_WORDS = (".", "a", "about", "and", "because", "bought", "counted", "feels", "found", "has",
                   "is", "it", "looks", "the", "to", "went")


def _sentence(*words: str) -> str:
  return " ".join(words) + " ."


def _pretraining_document(rng: random.Random) -> str:
  """An optional scene sentence, then two or three of: a quality, an opinion, a feeling (shuffled)."""
  polarity = rng.randrange(2)
  name, other = rng.sample(NAMES, 2)
  item, colour, size = rng.choice(ITEMS), rng.choice(COLOURS), rng.choice(SIZES)
  quality = lambda: rng.choice(QUALITIES[polarity])
  scene = rng.choice([
      _sentence(name, "bought a", colour, item),
      _sentence(name, "has", rng.choice(COUNTS), colour, item + "s"),
      _sentence(name, "found a", size, colour, item),
      _sentence(name, "and", other, "went to the", rng.choice(PLACES)),
      _sentence(other, "counted", rng.choice(COUNTS), rng.choice(COLOURS), rng.choice(ITEMS) + "s"),
  ])
  body = [
      rng.choice([_sentence("the", item, "is", quality()),
                  _sentence("the", colour, item, "is", size, "and", quality()),
                  _sentence("it looks", quality(), "and", size)]),
      rng.choice([_sentence(name, rng.choice(VERBS[polarity]), "the", item),
                  _sentence(name, rng.choice(VERBS[polarity]), "it because it is", quality())]),
      _sentence(name, LABEL_FRAME[0], LABELS[polarity], LABEL_FRAME[1], item),
  ]
  rng.shuffle(body)
  sentences = body[:rng.randint(2, 3)]
  if rng.random() < 0.5:
    sentences.insert(0, scene)
  return " ".join(sentences)


def pretraining_documents(num: int, seed: int) -> list[str]:
  """`num` pretraining documents; the same (num, seed) always gives the same list."""
  rng = random.Random(seed)
  return [_pretraining_document(rng) for _ in range(num)]


def _review(rng: random.Random, polarity: int, half: int) -> str:
  item, colour, size = rng.choice(ITEMS), rng.choice(COLOURS), rng.choice(SIZES)
  quality = _sentence("the", colour, item, "is", size, "and", rng.choice(QUALITIES[polarity][half::2]))
  opinion = _sentence(rng.choice(NAMES), rng.choice(VERBS[polarity][half::2]), "the", item)
  return rng.choice([quality, opinion, quality + " " + opinion])


def _quality_review(rng: random.Random, polarity: int, half: int) -> str:
  item, colour, size = rng.choice(ITEMS), rng.choice(COLOURS), rng.choice(SIZES)
  return _sentence("the", colour, item, "is", size, "and", rng.choice(QUALITIES[polarity][half::2]))


def _story(rng: random.Random, polarity: int, half: int) -> str:
  """A scene, then a quality or an opinion, in the sentence patterns of pretraining documents."""
  name, item, colour, size = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(COLOURS), rng.choice(SIZES)
  quality, verb = rng.choice(QUALITIES[polarity][half::2]), rng.choice(VERBS[polarity][half::2])
  return rng.choice([_sentence(name, "bought a", colour, item) + " " + _sentence("it looks", quality, "and", size),
                     _sentence(name, "found a", colour, item) + " " + _sentence(name, verb, "it because it is",
                                                                                quality)])


def _choice(rng: random.Random, polarity: int, half: int) -> str:
  """Two items of opposite polarity, then the one a person bought (of polarity `polarity`)."""
  first, second = rng.sample(ITEMS, 2)
  bought_first = rng.random() < 0.5
  polarities = (polarity, 1 - polarity) if bought_first else (1 - polarity, polarity)
  q1, q2 = (rng.choice(QUALITIES[p][half::2]) for p in polarities)
  return " ".join([_sentence("the", first, "is", q1, "and the", second, "is", q2),
                   _sentence(rng.choice(NAMES), "bought the", first if bought_first else second)])


def _balanced(num: int, seed: int, half: int, text: Callable[[random.Random, int, int], str]
              ) -> list[tuple[str, int]]:
  """`num` (text, label) pairs, classes balanced and in random order, texts from `text(rng, label, half)`."""
  if half not in (0, 1):
    raise ValueError(f"half={half!r} must be 0 or 1 (the even or odd positions of each word list).")
  rng = random.Random(seed)
  labels = [i % 2 for i in range(num)]
  rng.shuffle(labels)
  return [(text(rng, label, half), label) for label in labels]


def reviews(num: int, seed: int, half: int) -> list[tuple[str, int]]:
  """`num` (review, label) pairs, classes balanced and in random order.

  A review states a quality, an opinion or both, with the qualities and verbs of one half of the world's
  (`half=0`: even positions, `1`: odd), so a task can train on one half and evaluate on words its training
  examples never had: only what pretraining taught about them can tell their sentiment.
  """
  return _balanced(num, seed, half, _review)


def quality_reviews(num: int, seed: int, half: int) -> list[tuple[str, int]]:
  """`num` (quality statement, label) pairs: "the red lamp is tall and flimsy ." -> 0 (`OPINION_LABELS[0]`)."""
  return _balanced(num, seed, half, _quality_review)


def stories(num: int, seed: int, half: int) -> list[tuple[str, int]]:
  """`num` (story, sentiment label) pairs in the patterns of pretraining documents, not of `reviews`:
  "anna bought a red lamp . it looks flimsy and tall ." -> 0."""
  return _balanced(num, seed, half, _story)


def choices(num: int, seed: int, half: int) -> list[tuple[str, int]]:
  """`num` (choice, label) pairs: "the lamp is flimsy and the chair is sturdy . ben bought the chair ." -> 1,
  the polarity of the bought item (the other item always has the opposite one)."""
  return _balanced(num, seed, half, _choice)


def vocabulary_words() -> tuple[str, ...]:
  """Every word (and the full stop) the generators can produce, sorted."""
  words = {*_FUNCTION_WORDS, *NAMES, *ITEMS, *(item + "s" for item in ITEMS), *COLOURS, *SIZES, *COUNTS,
           *PLACES, *QUALITIES[0], *QUALITIES[1], *VERBS[0], *VERBS[1], *LABELS}
  return tuple(sorted(words))


# ------------------------------------------------------------------------------------------------ language b
LANGUAGES = ("a", "b")  # "a": the world's own words; "b": the made-up vocabulary of `lexicon()`
SHARED_WORDS = frozenset((*NAMES, ".", *LABELS))  # spelled the same in both languages


@functools.cache
def lexicon() -> dict[str, str]:
  """Word of language "a" -> its word in language "b": distinct made-up words (consonant-vowel syllables) that
  are never a word of "a"; the shared words map to themselves. Fixed by a seed."""
  rng = random.Random(2026)
  own = set(vocabulary_words())
  out = {word: word for word in sorted(SHARED_WORDS)}
  used = set(own)
  for word in sorted(own - SHARED_WORDS):
    while True:
      candidate = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.choice((2, 3))))
      if candidate not in used:
        break
    used.add(candidate)
    out[word] = candidate
  return out


def translate(text: str, language: str) -> str:
  """`text` (written in language "a") in `language`: word by word through `lexicon()` for "b"."""
  if language not in LANGUAGES:
    raise ValueError(f"language={language!r} must be one of {LANGUAGES}.")
  if language == "a":
    return text
  words = lexicon()
  return " ".join(words[word] for word in text.split(" "))


def bilingual_vocabulary_words() -> tuple[str, ...]:
  """Every word of both languages, sorted."""
  return tuple(sorted({*vocabulary_words(), *lexicon().values()}))
