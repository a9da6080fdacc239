"""A small synthetic shopping world and the text generated from it (pure Python, seeded, deterministic).

People buy items; items have colours, sizes and qualities that are either good or bad, and people's verbs
and feelings follow that quality. Two kinds of text come out of it:

* pretraining documents (`pretraining_documents`): a few sentences, mostly about one person and one item.
  The label words `positive` / `negative` occur only inside the phrase "{name} feels {label} about the
  {item}", so a model pretrained on them can emit the words and learns which qualities and verbs go with
  which, but never sees a text followed by its sentiment label alone;
* reviews (`reviews`): a quality, an opinion or both, with a sentiment label (`LABELS[label]`), balanced.

Every string is lower case, words and punctuation separated by single spaces.
"""
from __future__ import annotations

import random

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


def reviews(num: int, seed: int, half: int) -> list[tuple[str, int]]:
  """`num` (review, label) pairs, classes balanced and in random order.

  A review states a quality, an opinion or both, with the qualities and verbs of one half of the world's
  (`half=0`: even positions, `1`: odd), so a task can train on one half and evaluate on words its training
  examples never had: only what pretraining taught about them can tell their sentiment.
  """
  if half not in (0, 1):
    raise ValueError(f"half={half!r} must be 0 or 1.")
  rng = random.Random(seed)
  labels = [i % 2 for i in range(num)]
  rng.shuffle(labels)
  return [(_review(rng, label, half), label) for label in labels]


def vocabulary_words() -> tuple[str, ...]:
  """Every word (and the full stop) the generators can produce, sorted."""
  words = {*_FUNCTION_WORDS, *NAMES, *ITEMS, *(item + "s" for item in ITEMS), *COLOURS, *SIZES, *COUNTS,
           *PLACES, *QUALITIES[0], *QUALITIES[1], *VERBS[0], *VERBS[1], *LABELS}
  return tuple(sorted(words))
