"""Algorithms as plug-ins: a base (FixMatch, ACR, ...) plus terms (ABC, BaCon), one module each.

    algo = create_algorithm(cfg.algorithm, cfg, num_classes=K, labeled_counts=counts,
                            num_labeled=N_L, num_unlabeled=N_U, seed=cfg.seed,
                            rank=accelerator.process_index, gather=accelerator.gather)
    loss, logs, out = algo.forward_loss(model, algo.make_batch(lb, ulb), step, total_steps)
    ...backward, optimizer...
    algo.after_step(step, total_steps)

Names. An algorithm is a base followed by terms in registration order, joined by "+":
`fixmatch`, `fixmatch+abc`, `fixmatch+abc+bacon`, `acr`, `acr+bacon` (`algorithm_names()` lists every
valid one). `abc` and `bacon` are aliases of `fixmatch+abc` and `fixmatch+abc+bacon` (registered by the
ABC and BaCon modules). Nothing outside this package lists algorithm names: the config's validation and
`--help`, the trainer, evaluation, export, card and study grid ask the registry (`components`,
`model_heads`, `eval_head_of`, `describe`, `check_against_data`); `tests/test_plugins.py` fails if a
second list appears.

The plug-in contract (`base.Plugin`; write one module and decorate the class with `@register`):

- `name`: the plug-in's name in algorithm names and its config section (`cfg.<name>`,
  `--set <name>.<field>=...`). `kind`: "base" or "term".
- `Config`: a dataclass (or None). Every int / float field carries its valid range as metadata,
  `field(default=0.95, metadata={"range": FRACTION})` (`bacon_zoo.config.Range`, `at_least`, `above`);
  the section and its ranges are registered with the plug-in. A plug-in's `__init__(cfg, ctx)` gets
  only its own section and a `Context` (classes, labeled counts, set sizes, seed, rank, gather, which
  unlabeled images are also labeled), never the whole TrainConfig.
- `heads(cfg) -> tuple[Head, ...]` (classmethod, from its own section): the extra heads it needs on
  the network (`bacon_zoo.models.Head`: a classifier `head_<name>` with output `logits_<name>`, or an
  embedding `<name>`, e.g. BaCon's `proj` sized by `bacon.proj_dim`). The network gets the main head h
  plus exactly the heads of its algorithm's plug-ins, in plug-in order.
- `balanced_head`: the classifier it trains class-balanced; the last one in the algorithm is evaluated
  and exported (`Algorithm.eval_head`; "main" when there is none). `needs_balanced_head`: a term that
  reads the balanced head (BaCon's anchors); a term with a `balanced_head` cannot join a base that
  has one. These rules decide which names are valid.
- `unlabeled_views` (bases): the views of each unlabeled image, key -> "weak" | "strong" |
  "strong<i>" (independent strong draws), in forward order; the data streams make exactly these.
- `forward_pass(model, batch, step)` (bases): the step's network outputs. The default is one forward
  over [x_lb | each view]; a base that needs other passes (MixUp, several BatchNorm batches) overrides
  it, and keeps, for every head a term reads, rows [0, B) labeled, [B, B+U) weak, [B+U, B+2U) the
  first strong view. `BaconNet.head_outputs(feat)` runs every head on given features.
- `loss(out, batch, step, total_steps, algo) -> (weighted loss | None, logs)`: its contribution,
  summed in plug-in order (base first); logs are detached 0-dim tensors (no host syncs).
  `after_step(step, total_steps)`: state updates after the optimizer. `diagnostics()`: JSON-ready
  numbers added to each evaluation's metrics.jsonl record.
- State: buffers only (tensors), so `state_dict()` is what the checkpoint stores (safetensors + JSON);
  randomness from `self.generator(step, device)` (seeded by seed, rank, step) so a resume is exact;
  under several processes, anything estimated from a batch is gathered so every rank holds the same.
- `check_data(cfg, num_classes)` (classmethod): one-line UserErrors for settings the data rules out.
- Card: `title`, `summary`, `role` ("base" | "imbalance" | "contrastive"), `reported_with` (terms: the
  bases a paper reports it with; any other base gets a "no paper reports this combination" note).
"""

from __future__ import annotations

from .abc import ABC, ABCConfig, abc_labeled_mask, abc_ratios, abc_unlabeled_mask
from .acr import ACR, ACRConfig
from .bacon import (
    BaCon,
    BaconConfig,
    bacon_contrastive_loss,
    bacon_contrastive_terms,
    bta_temperatures,
    reduce_anchors,
    reliable_negatives,
)
from .bank import MemoryBank
from .base import Algorithm, Context, Plugin, split_batch, split_views, step_seed
from .fixmatch import (
    FixMatch,
    FixMatchConfig,
    fixmatch_unlabeled_loss,
    masked_cross_entropy,
    pseudo_labels,
)
from .registry import (
    ALIASES,
    PLUGINS,
    algorithm_names,
    canonical,
    check_against_data,
    components,
    create_algorithm,
    describe,
    eval_head_of,
    head_description,
    model_heads,
    register,
    unregister,
)
from .remixmatch import ReMixMatch, ReMixMatchConfig

__all__ = [
    "ABC",
    "ABCConfig",
    "ACR",
    "ACRConfig",
    "ALIASES",
    "Algorithm",
    "BaCon",
    "BaconConfig",
    "Context",
    "FixMatch",
    "FixMatchConfig",
    "MemoryBank",
    "PLUGINS",
    "Plugin",
    "ReMixMatch",
    "ReMixMatchConfig",
    "abc_labeled_mask",
    "abc_ratios",
    "abc_unlabeled_mask",
    "algorithm_names",
    "bacon_contrastive_loss",
    "bacon_contrastive_terms",
    "bta_temperatures",
    "canonical",
    "check_against_data",
    "components",
    "create_algorithm",
    "describe",
    "eval_head_of",
    "fixmatch_unlabeled_loss",
    "head_description",
    "masked_cross_entropy",
    "model_heads",
    "pseudo_labels",
    "reduce_anchors",
    "register",
    "reliable_negatives",
    "split_batch",
    "split_views",
    "step_seed",
    "unregister",
]
