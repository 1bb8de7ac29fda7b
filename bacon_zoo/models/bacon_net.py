"""The BaCon network: a timm backbone f, the main head h, and the heads its algorithm asks for.

The algorithm plug-in (`bacon_zoo.algorithms`) names the extra heads as `Head` specs: FixMatch none, ABC
the balanced head h_a ("abc"), BaCon's term the projection g ("proj"), ACR its balanced branch, ... One
forward pass gives f(x) and every head on it (docs/method.md, "Network"), as a named tuple whose fields
are `feat`, `logits` (h) and one field per extra head (`logits_<name>` for a classifier, `<name>` for an
embedding). Without `heads`, the net has the full BaCon set (h, h_a, g): older exports and USB imports.
The backbone is a timm model built with `num_classes=0`, so it returns pooled features and can be turned
back into a plain timm classifier (`to_timm_classifier`) for export to `timm.create_model("hf-hub:...")`.
"""

import functools
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from bacon_zoo.errors import UserError

from .factory import create_backbone
from .lora import merged
from .wrn import WideResNet
from .wrn import init_weights as wrn_init

HEAD_INITS = ("default", "family")


@dataclass(frozen=True)
class Head:
    """One extra head on f(x): a classifier (`dim` None = K classes; module `head_<name>`, output
    `logits_<name>`) or an embedding (module and output `<name>`, e.g. BaCon's projection "proj").
    `description` is what a model card calls it when it is the evaluated head."""

    name: str
    dim: int | None = None
    kind: str = "classifier"  # "classifier" | "embedding"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("classifier", "embedding") or not self.name.isidentifier():
            raise ValueError(f"bad head spec {self!r}")
        if self.name == "main":
            raise ValueError("'main' is the network's own head h; name extra heads otherwise")

    @property
    def module(self) -> str:
        return f"head_{self.name}" if self.kind == "classifier" else self.name

    @property
    def output(self) -> str:
        return output_field(self.name) if self.kind == "classifier" else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "kind": self.kind}


def output_field(head: str) -> str:
    """The output field of classifier `head`: "logits" for the main head, else "logits_<head>"."""
    return "logits" if head == "main" else f"logits_{head}"


def legacy_heads(proj_dim: int = 16) -> tuple[Head, ...]:
    """The full BaCon set every net had before heads came from the algorithm: h_a and g."""
    return (Head("abc"), Head("proj", dim=proj_dim, kind="embedding"))


class BaconOutput(NamedTuple):
    """One forward pass of the full BaCon net over N images (D: feature size, K: classes, d: projection
    size). Nets with other heads return a named tuple of the same kind with their own fields."""

    feat: torch.Tensor  # [N, D] pooled backbone feature f(x)
    logits: torch.Tensor  # [N, K] main head h: the FixMatch losses
    logits_abc: torch.Tensor  # [N, K] ABC head h_a: the ABC loss and test-time predictions
    proj: torch.Tensor  # [N, d] projection g: BaCon's contrastive loss (no BN / act / norm)


@functools.cache
def output_type(fields: tuple[str, ...]) -> type:
    """The named-tuple class of a net's outputs (BaconOutput for the full BaCon set)."""
    if fields == BaconOutput._fields:
        return BaconOutput
    return namedtuple("BaconOutput", fields)


def _init_like_family(backbone: nn.Module, linear: nn.Linear) -> None:
    """Init a new head the way the backbone family inits its own classifier."""
    if isinstance(backbone, WideResNet):
        wrn_init(linear)  # xavier normal, zero bias (USB)
    elif isinstance(backbone, VisionTransformer):
        nn.init.trunc_normal_(linear.weight, std=0.02)  # timm's ViT init
        nn.init.zeros_(linear.bias)
    # other timm families keep PyTorch's Linear init, which is what their reset_classifier gives


class BaconNet(nn.Module):
    """Backbone + main head + the algorithm's extra heads (by default the ABC head and the projection).

    Args:
        backbone: a name for `create_backbone` (any timm model) or a timm model instance.
        num_classes: K.
        proj_dim: d, the projection size of the default heads (ignored when `heads` is given).
        pretrained: load the backbone's pretrained weights (names only).
        pretrained_file: load them from this local file instead (timm's `pretrained_cfg_overlay`).
        backbone_kwargs: passed to `timm.create_model` (names only), e.g. {"drop_path_rate": 0.1}.
        head_init: "default": the ABC head and the projection keep PyTorch's `nn.Linear` init, as in the
            release; "family": they get the backbone family's classifier init (xavier for WRNs, trunc
            normal for ViTs). The main head always gets the family's init (it is the backbone's
            classifier in the release).
        heads: the extra heads, built in this order after the main head (None: `legacy_heads`).
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int,
        proj_dim: int = 16,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        head_init: str = "default",
        pretrained_file: str | None = None,
        heads: Sequence[Head] | None = None,
    ) -> None:
        super().__init__()
        if head_init not in HEAD_INITS:
            raise UserError(f"unknown head_init '{head_init}'; choose {' or '.join(HEAD_INITS)}")
        if num_classes < 1 or proj_dim < 1:
            raise UserError(
                f"need num_classes >= 1 and proj_dim >= 1, got {num_classes} and {proj_dim}"
            )
        backbone_kwargs = dict(backbone_kwargs or {})
        if "num_classes" in backbone_kwargs:
            raise UserError(
                "--backbone-kwargs can't set num_classes: BaconNet owns the classifier heads"
            )
        if isinstance(backbone, str):
            name = backbone
            backbone = create_backbone(
                name, pretrained, pretrained_file, num_classes=0, **backbone_kwargs
            )
        else:
            if pretrained or pretrained_file or backbone_kwargs:
                raise ValueError("pretrained and backbone_kwargs apply to a backbone given by name")
            if not hasattr(backbone, "reset_classifier"):
                raise UserError(
                    f"{type(backbone).__name__} is not a timm model (no reset_classifier)"
                )
            if backbone.num_classes != 0:
                backbone.reset_classifier(0)
            name = getattr(backbone, "pretrained_cfg", {}).get(
                "architecture", type(backbone).__name__
            )

        self.backbone = backbone
        self.backbone_name = name
        self.backbone_kwargs = backbone_kwargs
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.head_init = head_init
        # pre-logits width: differs from num_features for models with a head MLP/conv or concat pooling
        self.num_features = dim = (
            getattr(backbone, "head_hidden_size", None) or backbone.num_features
        )
        self.heads = tuple(legacy_heads(proj_dim) if heads is None else heads)
        if len({h.name for h in self.heads}) != len(self.heads):
            raise ValueError(f"duplicate head names in {self.heads}")
        embedding = next((h for h in self.heads if h.name == "proj"), None)
        self.proj_dim = embedding.dim if embedding is not None else None
        # created in this order (main head first): the seed gives the same initial weights as before
        self.head = nn.Linear(dim, num_classes)
        for h in self.heads:
            if h.dim is not None and h.dim < 1:
                raise UserError(f"head '{h.name}' needs a size >= 1, got {h.dim}")
            self.add_module(h.module, nn.Linear(dim, num_classes if h.dim is None else h.dim))
        _init_like_family(backbone, self.head)
        if head_init == "family":
            for h in self.heads:
                _init_like_family(backbone, getattr(self, h.module))
        self._outputs = output_type(("feat", "logits", *(h.output for h in self.heads)))
        self._register_load_state_dict_pre_hook(_drop_absent_legacy_heads, with_module=True)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm pretrained_cfg (input size, mean/std, ...) for the data pipeline."""
        return dict(getattr(self.backbone, "pretrained_cfg", {}))

    def head_for(self, name: str) -> nn.Linear:
        """The classifier `name`: "main" (h) or an extra classifier head ("abc": h_a, ...)."""
        heads = {"main": self.head} | {
            h.name: getattr(self, h.module) for h in self.heads if h.kind == "classifier"
        }
        if name not in heads:
            raise UserError(f"unknown head '{name}'; this net has {' or '.join(heads)}")
        return heads[name]

    def head_outputs(self, feat: torch.Tensor) -> tuple:
        """Every head on given features: the named tuple `forward` returns (for algorithms that run
        the backbone themselves, e.g. several passes)."""
        return self._outputs(
            feat, self.head(feat), *(getattr(self, h.module)(feat) for h in self.heads)
        )

    def forward(self, x: torch.Tensor) -> BaconOutput:
        feat = self.backbone(x)
        if feat.ndim != 2:
            raise UserError(
                f"backbone '{self.backbone_name}' returned {tuple(feat.shape)}, not pooled features "
                "[N, D]; don't set global_pool='' in --backbone-kwargs"
            )
        return self.head_outputs(feat)

    @torch.no_grad()
    def to_timm_classifier(self, head: str = "abc") -> nn.Module:
        """A plain timm model of the same architecture whose classifier holds `head`'s weights.

        Its logits equal `self(x).logits_<head>` (`.logits` for "main"); it is what gets exported, so
        `timm.create_model("hf-hub:...")` gives the BaCon predictor without this package's classes
        (except for the small-image models, which need `import bacon_zoo` to be registered).
        """
        linear = self.head_for(head)
        backbone = merged(self.backbone)  # LoRA adapters folded in: a plain timm model
        cfg = dict(getattr(backbone, "pretrained_cfg", {}))
        cfg.pop("file", None)  # a local --pretrained-file path is not part of what we publish
        arch = cfg.get("architecture")
        if not arch or not timm.is_model(arch):
            raise UserError(
                f"backbone '{self.backbone_name}' is not a registered timm model; can't export it"
            )
        # the factory records the constructor args (incl. those from an hf-hub config); older timm doesn't
        args = dict(getattr(backbone, "_model_args", None) or self.backbone_kwargs)
        args["num_classes"] = self.num_classes
        model = timm.create_model(arch, pretrained=False, pretrained_cfg=cfg, **args)

        classifier = model.get_classifier()
        cls_name = next(n for n, m in model.named_modules() if m is classifier)
        weight = linear.weight
        if isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1):
            weight = weight[:, :, None, None]
        elif not isinstance(classifier, nn.Linear):
            raise UserError(
                f"can't export '{arch}': its classifier is a {type(classifier).__name__}"
            )
        state = backbone.state_dict()
        state[f"{cls_name}.weight"] = weight
        state[f"{cls_name}.bias"] = linear.bias
        model.load_state_dict(state, strict=True)
        ref = next(self.backbone.parameters())
        return model.to(device=ref.device, dtype=ref.dtype).train(self.training)


_LEGACY_MODULES = ("head_abc.", "proj.")


def _drop_absent_legacy_heads(module: BaconNet, state: dict, prefix: str, *args: Any) -> None:
    """Weights of a run made when every net had h_a and g (a FixMatch run of an older version) load
    into a net built without them: the heads its algorithm never trained are dropped, nothing else."""
    own = {h.module for h in module.heads}
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest.startswith(_LEGACY_MODULES) and rest.split(".", 1)[0] not in own:
            del state[key]
