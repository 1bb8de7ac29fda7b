"""The BaCon network: a timm backbone f, the main head h, the ABC head h_a and the projection g.

One forward pass gives everything the losses need (docs/method.md, "Network"): f(x), h(f(x)), h_a(f(x)), g(f(x)).
The backbone is a timm model built with `num_classes=0`, so it returns pooled features and can be turned
back into a plain timm classifier (`to_timm_classifier`) for export to `timm.create_model("hf-hub:...")`.
"""

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


class BaconOutput(NamedTuple):
    """One forward pass over a batch of N images (D: feature size, K: classes, d: projection size)."""

    feat: torch.Tensor  # [N, D] pooled backbone feature f(x)
    logits: torch.Tensor  # [N, K] main head h: the FixMatch losses
    logits_abc: torch.Tensor  # [N, K] ABC head h_a: the ABC loss and test-time predictions
    proj: torch.Tensor  # [N, d] projection g: BaCon's contrastive loss (no BN / act / norm)


def _init_like_family(backbone: nn.Module, linear: nn.Linear) -> None:
    """Init a new head the way the backbone family inits its own classifier."""
    if isinstance(backbone, WideResNet):
        wrn_init(linear)  # xavier normal, zero bias (USB)
    elif isinstance(backbone, VisionTransformer):
        nn.init.trunc_normal_(linear.weight, std=0.02)  # timm's ViT init
        nn.init.zeros_(linear.bias)
    # other timm families keep PyTorch's Linear init, which is what their reset_classifier gives


class BaconNet(nn.Module):
    """Backbone + main head + ABC head + projection.

    Args:
        backbone: a name for `create_backbone` (any timm model) or a timm model instance.
        num_classes: K.
        proj_dim: d, the projection size (16 in the latest release, 32 in the first).
        pretrained: load the backbone's pretrained weights (names only).
        pretrained_file: load them from this local file instead (timm's `pretrained_cfg_overlay`).
        backbone_kwargs: passed to `timm.create_model` (names only), e.g. {"drop_path_rate": 0.1}.
        head_init: "default": the ABC head and the projection keep PyTorch's `nn.Linear` init, as in the
            release; "family": they get the backbone family's classifier init (xavier for WRNs, trunc
            normal for ViTs). The main head always gets the family's init (it is the backbone's
            classifier in the release).
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
        self.head = nn.Linear(dim, num_classes)
        self.head_abc = nn.Linear(dim, num_classes)
        self.proj = nn.Linear(dim, proj_dim)
        _init_like_family(backbone, self.head)
        if head_init == "family":
            _init_like_family(backbone, self.head_abc)
            _init_like_family(backbone, self.proj)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm pretrained_cfg (input size, mean/std, ...) for the data pipeline."""
        return dict(getattr(self.backbone, "pretrained_cfg", {}))

    def head_for(self, name: str) -> nn.Linear:
        """The classifier `name`: "main" (h, FixMatch) or "abc" (h_a, evaluation)."""
        heads = {"main": self.head, "abc": self.head_abc}
        if name not in heads:
            raise UserError(f"unknown head '{name}'; choose main or abc")
        return heads[name]

    def forward(self, x: torch.Tensor) -> BaconOutput:
        feat = self.backbone(x)
        if feat.ndim != 2:
            raise UserError(
                f"backbone '{self.backbone_name}' returned {tuple(feat.shape)}, not pooled features "
                "[N, D]; don't set global_pool='' in --backbone-kwargs"
            )
        return BaconOutput(feat, self.head(feat), self.head_abc(feat), self.proj(feat))

    @torch.no_grad()
    def to_timm_classifier(self, head: str = "abc") -> nn.Module:
        """A plain timm model of the same architecture whose classifier holds `head`'s weights.

        Its logits equal `self(x).logits_abc` (or `.logits` for "main"); it is what gets exported, so
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
