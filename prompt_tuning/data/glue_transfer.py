"""Zero-shot transfer between QQP and MRPC; importing this module registers it.

QQP labels pairs "duplicate"/"not_duplicate" and MRPC "equivalent"/
"not_equivalent". A prompt trained on one is evaluated on the other by first
rewriting its predictions into the other's label words. With an optional
`mt5_` prefix:

* eval tasks `{,taskless_,task_index_}glue_{tgt}_from_{src}_v002{,_examples}`:
  the validation split of TFDS `glue/{tgt}:1.0.0`, with `tgt`'s metrics;
* mixtures `{,taskless_,task_index_}glue_{tgt}_from_{src}_zeroshot_v002{,_examples}`:
  train on `…glue_{src}_v002`, evaluate on the task above.

(src, tgt) is (qqp, mrpc) or (mrpc, qqp).
"""
from __future__ import annotations

from typing import Any, Callable

import seqio

from prompt_tuning.data import features
from prompt_tuning.data import glue
from prompt_tuning.data import postprocessors
from prompt_tuning.data import utils

# (source task, target task) -> rewrite of source label words into the target's.
TRANSLATIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("qqp", "mrpc"): postprocessors.qqp_to_mrpc,
    ("mrpc", "qqp"): postprocessors.mrpc_to_qqp,
}


def transfer_family(source: str, target: str) -> utils.TaskFamily:
  """Validation set of GLUE `target`, scoring predictions made in `source`'s labels."""
  return utils.TaskFamily(
      base=f"glue_{target}_from_{source}_v002",
      source=seqio.TfdsDataSource(tfds_name=f"glue/{target}:1.0.0", splits=["validation"]),
      text_preprocessors=[glue.text_preprocessor(target)],
      postprocess_fn=postprocessors.sequential(TRANSLATIONS[(source, target)],
                                               glue.postprocess_fn(target)),
      metric_fns=glue.METRICS[target],
      summary_name=target,
      task_index=glue.TASK_INDEX[target])


def register() -> None:
  """Registers the zero-shot eval tasks and train-on-source mixtures."""
  for source, target in TRANSLATIONS:
    utils.register_task_family(transfer_family(source, target))
    for model_prefix in features.MODEL_TO_FEATURES:
      for variant in utils.VARIANTS:
        for suffix in ("", utils.EXAMPLES):
          prefix = f"{model_prefix}{variant}"
          utils.add_mixture(
              f"{prefix}glue_{target}_from_{source}_zeroshot_v002{suffix}",
              [f"{prefix}glue_{source}_v002", f"{prefix}glue_{target}_from_{source}_v002{suffix}"],
              default_rate=1.0)


register()
