"""The plug-in registry: the one place that knows which algorithms exist.

`@register` adds a `Plugin` class (and its config section to `bacon_zoo.config`); everything else (the
config's validation and `--help`, the trainer, evaluation, export, the card, the study grid) asks the
functions here. An algorithm name is a base followed by terms in registration order, joined by "+"
(`fixmatch+abc+bacon`); `ALIASES` keeps older names (`abc`, `bacon`).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

from bacon_zoo import config as config_module
from bacon_zoo.errors import UserError
from bacon_zoo.models.bacon_net import Head, output_field

from .base import Algorithm, Context, Gather, Plugin

P = TypeVar("P", bound=type[Plugin])

PLUGINS: dict[str, type[Plugin]] = {}
ALIASES: dict[str, str] = {}


def register(cls: P | None = None, *, aliases: dict[str, str] | None = None) -> Any:
    """Class decorator: register a plug-in under `cls.name` (and its `Config` as config section
    `cls.name`). `aliases` maps extra algorithm names to canonical ones ({"bacon": "fixmatch+abc+bacon"})."""

    def add(c: P) -> P:
        if not c.name or not c.name.isidentifier():
            raise ValueError(f"plug-in {c.__name__} needs a `name` that is an identifier")
        if c.kind not in ("base", "term"):
            raise ValueError(f"plug-in {c.name}: kind must be 'base' or 'term', not {c.kind!r}")
        PLUGINS[c.name] = c
        if c.Config is not None:
            config_module.register_section(c.name, c.Config)
        for alias, target in (aliases or {}).items():
            ALIASES[alias] = target
        return c

    return add(cls) if cls is not None else add


def unregister(name: str) -> None:
    """Remove a plug-in and its section (tests that register a toy one clean up with this)."""
    PLUGINS.pop(name, None)
    config_module.SECTIONS.pop(name, None)
    for key in [k for k in config_module.RANGES if k.startswith(f"{name}.")]:
        del config_module.RANGES[key]
    for alias in [a for a, t in ALIASES.items() if name in t.split("+")]:
        del ALIASES[alias]


def _valid(parts: Sequence[type[Plugin]]) -> bool:
    """A base, then terms in registration order, each term's needs met by what comes before it."""
    if not parts or parts[0].kind != "base" or any(p.kind != "term" for p in parts[1:]):
        return False
    order = list(PLUGINS)
    idx = [order.index(p.name) for p in parts[1:]]
    if idx != sorted(set(idx)):
        return False
    balanced = parts[0].balanced_head is not None
    for term in parts[1:]:
        if term.needs_balanced_head and not balanced:
            return False
        if term.balanced_head is not None:
            if balanced:  # one class-balanced head per algorithm
                return False
            balanced = True
    return True


def algorithm_names(aliases: bool = True) -> list[str]:
    """Every valid algorithm name (bases with each valid set of terms), then the aliases."""
    bases = [c for c in PLUGINS.values() if c.kind == "base"]
    terms = [c for c in PLUGINS.values() if c.kind == "term"]
    names = []
    for base in bases:
        for r in range(len(terms) + 1):
            for combo in itertools.combinations(terms, r):
                if _valid((base, *combo)):
                    names.append("+".join(c.name for c in (base, *combo)))
    return names + (list(ALIASES) if aliases else [])


def canonical(name: str) -> str:
    """The canonical name of `name` (an alias resolved), or a one-line UserError."""
    return "+".join(c.name for c in components(name))


def components(name: str) -> tuple[type[Plugin], ...]:
    """The plug-in classes of algorithm `name`, base first; unknown names raise a one-line UserError."""
    full = ALIASES.get(name, name)
    parts = tuple(PLUGINS.get(p) for p in full.split("+"))
    if all(p is not None for p in parts) and _valid(parts):  # type: ignore[arg-type]
        return parts  # type: ignore[return-value]
    known = algorithm_names()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"algorithm '{name}' is not one of {', '.join(known)}{hint}")


def _sections(cfg: Any, parts: Sequence[type[Plugin]]) -> list[Any]:
    """Each plug-in's own config section from a TrainConfig (None for a plug-in without one);
    with `cfg` None, each section's defaults."""
    out = []
    for p in parts:
        if p.Config is None:
            out.append(None)
        elif cfg is None:
            out.append(p.Config())
        else:
            out.append(getattr(cfg, p.name))
    return out


def model_heads(cfg: Any, algorithm: str | None = None) -> tuple[Head, ...]:
    """The extra heads the network of a run needs, in build order (the first plug-in to ask for a
    head name builds it)."""
    parts = components(algorithm or cfg.algorithm)
    heads: dict[str, Head] = {}
    for part, section in zip(parts, _sections(cfg, parts)):
        for h in part.heads(section):
            heads.setdefault(h.name, h)
    return tuple(heads.values())


def eval_head_of(algorithm: str) -> str:
    """Which head a run of `algorithm` is evaluated (and exported) with."""
    heads = [p.balanced_head for p in components(algorithm) if p.balanced_head]
    return heads[-1] if heads else "main"


def head_description(head: str) -> str:
    """What a card calls a classifier head, from the plug-in that declares it."""
    if head == "main":
        return "main head h"
    for p in PLUGINS.values():
        try:
            declared = p.heads(p.Config() if p.Config is not None else None)
        except Exception:  # a plug-in whose heads need a real config: skip it here
            continue
        for h in declared:
            if h.name == head and h.description:
                return h.description
    return f"'{head}' head"


def check_against_data(cfg: Any, num_classes: int) -> None:
    """Every plug-in's data-dependent checks (one-line UserErrors)."""
    parts = components(cfg.algorithm)
    for part, section in zip(parts, _sections(cfg, parts)):
        part.check_data(section, num_classes)


def describe(algorithm: str) -> dict[str, Any]:
    """What a model card says about an algorithm: base, imbalance method, BaCon-style term, a summary
    and notes (a combination no paper reports)."""
    parts = components(algorithm)
    base = parts[0]
    imbalance = [p for p in parts if p.role == "imbalance" or (p is base and p.balanced_head)]
    contrastive = [p for p in parts if p.role == "contrastive"]
    notes = [
        f"{t.title} on {base.title}: a combination no paper reports (bacon-zoo composes it; no "
        "published number to compare with)."
        for t in parts[1:]
        if t.reported_with is not None and base.name not in t.reported_with
    ]
    return {
        "name": "+".join(p.name for p in parts),
        "base": base.title,
        "imbalance": " + ".join(p.title for p in imbalance) or "none",
        "contrastive": " + ".join(p.title for p in contrastive) or "none",
        "summary": " + ".join(p.summary or p.title for p in parts),
        "notes": notes,
        "eval_head": eval_head_of(algorithm),
        "eval_output": output_field(eval_head_of(algorithm)),
        "sections": [p.name for p in parts if p.Config is not None],
    }


def create_algorithm(
    name: str,
    cfg: Any = None,
    num_classes: int = 10,
    labeled_counts: Sequence[int] | None = None,
    num_labeled: int = 0,
    num_unlabeled: int = 0,
    seed: int = 0,
    rank: int = 0,
    gather: Gather | None = None,
    unlabeled_is_labeled: Any = None,
) -> Algorithm:
    """Build algorithm `name`: each plug-in gets its own config section of `cfg` (a TrainConfig; None:
    every section's defaults) and the shared `Context`."""
    parts = components(name)
    ctx = Context(
        num_classes=num_classes,
        labeled_counts=list(labeled_counts if labeled_counts is not None else [1] * num_classes),
        num_labeled=num_labeled,
        num_unlabeled=num_unlabeled,
        seed=seed,
        rank=rank,
        unlabeled_is_labeled=unlabeled_is_labeled,
        **({"gather": gather} if gather is not None else {}),
    )
    built = [p(section, ctx) for p, section in zip(parts, _sections(cfg, parts))]
    return Algorithm("+".join(p.name for p in parts), built, alias=name)


def _check_config(cfg: Any) -> None:
    components(cfg.algorithm)


def _help_names() -> tuple[str, ...]:
    return tuple(algorithm_names())


config_module.VALIDATORS.append(_check_config)
config_module.HELP_CHOICES["algorithm"] = _help_names

__all__: list[str] = [
    "ALIASES",
    "PLUGINS",
    "algorithm_names",
    "canonical",
    "check_against_data",
    "components",
    "create_algorithm",
    "describe",
    "eval_head_of",
    "head_description",
    "model_heads",
    "register",
    "unregister",
]
