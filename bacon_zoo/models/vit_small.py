"""Vision Transformers at 32 px, built from timm's own `VisionTransformer` arguments.

A 16 px patch leaves 4 tokens at 32 px; patch 4 gives an 8x8 grid, patch 2 a 16x16 grid. `pretrained=True`
loads timm's ImageNet checkpoint of the 224 px parent; timm's `checkpoint_filter_fn` resamples the patch
embedding (FlexiViT pseudo-inverse resize, 16 -> 4 or 2) and the position embeddings (14x14 -> 8x8 or
16x16) itself.
"""

from typing import Any

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = ["plain_timm_spec"]


def _cfg(source: str, **kwargs: Any) -> dict[str, Any]:
    """32 px cfg whose weights are the 224 px checkpoint `source` on the timm Hub org."""
    return {
        "hf_hub_id": f"timm/{source}",
        "num_classes": 1000,
        "input_size": (3, 32, 32),
        "fixed_input_size": True,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_INCEPTION_MEAN,  # AugReg weights were trained on [-1, 1] inputs
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "notes": (
            f"ImageNet weights of {source}; patch and position embeddings resampled on load",
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_tiny_patch4_32.augreg_in21k_ft_in1k": _cfg(
            "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        ),
        "vit_small_patch4_32.augreg_in21k_ft_in1k": _cfg(
            "vit_small_patch16_224.augreg_in21k_ft_in1k"
        ),
        "vit_tiny_patch2_32.augreg_in21k_ft_in1k": _cfg(
            "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        ),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
        **kwargs,
    )


# ours -> (timm's 224 px parent, the args that turn the parent into ours); the one source for both
# the registered models below and `plain_timm_spec`
_PARENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_tiny_patch4_32": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4)),
    "vit_small_patch4_32": ("vit_small_patch16_224", dict(img_size=32, patch_size=4)),
    "vit_tiny_patch2_32": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=2)),
}
_PARENT_ARGS = {  # what the parents' timm entry points set (checked against timm in the tests)
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
}


def plain_timm_spec(model_name: str) -> tuple[str, dict[str, Any]] | None:
    """timm's own architecture and model_args that build `model_name` without this package.

    `timm.create_model(parent, **model_args)` is structurally identical to our model (same modules, same
    state dict), so a checkpoint exported under the parent's name loads in plain timm. None for models that
    only exist after `import bacon_zoo` (WRNs, CIFAR ResNets) or that aren't ours. A `.tag` is ignored.
    """
    parent = _PARENTS.get(model_name.split(".", 1)[0])
    return None if parent is None else (parent[0], dict(parent[1]))


def _vit(name: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    parent, args = _PARENTS[name]
    return _create(name, pretrained, **{**_PARENT_ARGS[parent], **args, **kwargs})


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/4 at 32 px (64 tokens + cls)."""
    return _vit("vit_tiny_patch4_32", pretrained, **kwargs)


@register_model
def vit_small_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/4 at 32 px (64 tokens + cls)."""
    return _vit("vit_small_patch4_32", pretrained, **kwargs)


@register_model
def vit_tiny_patch2_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/2 at 32 px (256 tokens + cls): 4x the tokens of patch 4, for more spatial detail."""
    return _vit("vit_tiny_patch2_32", pretrained, **kwargs)
