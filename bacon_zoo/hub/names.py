"""Names of exported models: pure functions every hub module imports (file names are bacon_zoo.run.layout).

A model is named the timm way, `arch.tag`, and the tag encodes the whole long-tailed setting so two runs
of different settings never share a name: `wrn28_2.bacon_c10lt_n1500m3000g100_s0` is BaCon on
CIFAR-10-LT with N1=1500, M1=3000, gamma_l=gamma_u=100, seed 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bacon_zoo.data.presets import dataset_code, slug
from bacon_zoo.fileio import sha256_file  # noqa: F401  (re-exported for importers of this module)

_TAG_RE = re.compile(r"[a-z0-9][a-z0-9_]*")


def is_tag(tag: str) -> bool:
    return bool(_TAG_RE.fullmatch(tag))


def _num(x: Any) -> str:
    """100.0 -> '100', 0.5 -> '0p5' (a tag holds no dots)."""
    text = f"{x:g}" if isinstance(x, float) else str(x)
    return text.replace(".", "p").replace("-", "m")


def setting_tag(
    dataset: str,
    n1: int,
    m1: int | None,
    imb_ratio_l: float,
    imb_ratio_u: float,
    reverse_u: bool = False,
    include_labeled_in_unlabeled: bool = False,
) -> str:
    """The setting part of a tag, e.g. `c10lt_n1500m3000g100` (gamma_u = gamma_l),
    `c10lt_n1500m3000g100u1` (gamma_u = 1, uniform unlabeled), `c10lt_n1500m3000g100r` (reversed
    unlabeled profile, same ratio), `stl10lt_n450mallg10` (M1 = all), a trailing `i`: labeled images
    also in the unlabeled set."""
    code = dataset_code(dataset)  # the preset's short code (timm tags are short: in1k, ...)
    gamma = f"g{_num(imb_ratio_l)}"
    if float(imb_ratio_u) != float(imb_ratio_l):
        gamma += f"u{_num(imb_ratio_u)}"
    if reverse_u:
        gamma += "r"
    tail = "i" if include_labeled_in_unlabeled else ""
    return f"{code}lt_n{n1}m{'all' if m1 is None else m1}{gamma}{tail}"


def arch_of(backbone: str) -> str:
    """`hf-hub:timm/resnet18.a1_in1k` -> `resnet18`, `wrn28_2` -> `wrn28_2`."""
    return backbone.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def model_name(recipe: Mapping[str, Any]) -> str:
    """timm-style `arch.tag` name of a run from its config (a dict of TrainConfig fields), e.g.
    `wrn28_2.bacon_c10lt_n1500m3000g100_s0`; also the default Hub repo name."""
    tag = "_".join(
        (
            slug(str(recipe["algorithm"])),
            setting_tag(
                str(recipe["dataset"]),
                int(recipe["n1"]),
                None if recipe.get("m1") is None else int(recipe["m1"]),
                float(recipe["imb_ratio_l"]),
                float(recipe["imb_ratio_u"]),
                bool(recipe.get("reverse_u")),
                bool(recipe.get("include_labeled_in_unlabeled")),
            ),
            f"s{int(recipe['seed'])}",
        )
    )
    return f"{arch_of(str(recipe['backbone']))}.{tag}"


def setting_string(recipe: Mapping[str, Any]) -> str:
    """The long-tailed setting for people, e.g. `N1=1000,M1=4000,gamma_l=100,gamma_u=100`."""

    def num(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else ("none" if x is None else str(x))

    m1 = recipe.get("m1")
    gu = num(recipe.get("imb_ratio_u"))
    parts = [
        f"N1={recipe.get('n1')}",
        f"M1={'all' if m1 is None else m1}",
        f"gamma_l={num(recipe.get('imb_ratio_l'))}",
        f"gamma_u={'1/' + gu if recipe.get('reverse_u') else gu}",
    ]
    if recipe.get("include_labeled_in_unlabeled"):
        parts.append("labeled_in_unlabeled")
    return ",".join(parts)


def needs_bacon_zoo(architecture: str) -> bool:
    """Whether loading `architecture` needs `import bacon_zoo` (it is registered in timm by this
    package: the CIFAR WRNs and the CIFAR-stem ResNets), or plain timm has it."""
    import timm

    fn = timm.models.model_entrypoint(architecture) if timm.is_model(architecture) else None
    return fn is None or fn.__module__.startswith("bacon_zoo.")


# a model or repo name as the Hugging Face Hub allows it: letters, digits and `._-`, one optional
# `owner/`; it is also a file name in the zoo (model_cards/<name>.md), so never `..` or absolute
_MODEL_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def check_model_name(name: str, flag: str = "--name") -> str:
    """`name` if it is a Hub-style model name, else a one-line UserError (checked where names enter)."""
    from bacon_zoo.errors import UserError

    if (
        not isinstance(name, str)
        or not _MODEL_NAME.fullmatch(name)
        or ".." in name
        or name.endswith((".", "-"))
    ):
        raise UserError(
            f"{flag} {name!r} is not a model name: use letters, digits and . _ - (with one optional "
            "OWNER/ in front), e.g. wrn28_2.bacon_c10lt_n1000m4000g100_s0"
        )
    return name
