"""FixMatch's three views of a uint8 HWC image, built from torchvision and timm ops.

weak   = random crop with reflect padding (image_size // 8, i.e. 4 px at 32) + horizontal flip
strong = weak + RandAugment (3 ops, each at a uniformly random magnitude, as USB's) + Cutout
eval   = normalise only
All return float32 CHW tensors normalised with the data set's mean/std. Randomness comes from the global
CPU torch / python `random` / numpy generators, which the loaders seed per sample (`seed_all`) inside
`preserved_rng`, so a view is a pure function of (image, sample seed) and the caller's streams are untouched.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms as T

Transform = Callable[[np.ndarray], torch.Tensor]

# 3 ops per image, every op applied (p1), magnitude uniform in [0, 10] (mstd > 100 means uniform in timm):
# the USB/FixMatch RandAugment. Translations reach 30% of the side, as in USB.
RANDAUGMENT = "rand-n3-m10-mstd101-p1"
# USB's op list in timm's names. 'PosterizeOriginal' keeps 4..8 bits as USB does; timm's default
# 'Posterize' asks for 0 bits at low magnitudes, which Pillow >= 11 rejects. No Invert / SolarizeAdd (not USB's).
RANDAUGMENT_OPS = [
    "AutoContrast", "Equalize", "Rotate", "PosterizeOriginal", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]  # fmt: skip
CUTOUT_MAX_SIDE = 0.5  # a square of side up to half the image (FixMatch's Cutout)


def _flip_crop(image_size: int) -> list:
    return [
        T.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"),
        T.RandomHorizontalFlip(),
    ]


def _to_normalised(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToTensor(), T.Normalize(mean, std)]


def weak_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Random crop (reflect pad image_size // 8) + horizontal flip, then normalise."""
    return T.Compose([T.ToPILImage(), *_flip_crop(image_size), *_to_normalised(mean, std)])


def strong_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Weak + RandAugment(3 ops, random magnitudes) + Cutout, the FixMatch strong view."""
    fill = tuple(round(255 * m) for m in mean)
    hparams = {"translate_pct": 0.3, "translate_const": int(0.3 * image_size), "img_mean": fill}
    cutout = T.RandomErasing(p=1.0, scale=(0.0, CUTOUT_MAX_SIDE**2), ratio=(1.0, 1.0), value=0)
    return T.Compose(
        [
            T.ToPILImage(),
            *_flip_crop(image_size),
            rand_augment_transform(RANDAUGMENT, hparams, transforms=RANDAUGMENT_OPS),
            *_to_normalised(mean, std),
            cutout,  # after normalising, value 0 is the data set's mean colour
        ]
    )


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Normalise only."""
    return T.Compose(_to_normalised(mean, std))


def seed_all(seed: int) -> None:
    """Seed the generators the augmentations draw from (CPU torch, python `random`, numpy's global)."""
    torch.random.default_generator.manual_seed(int(seed))  # CPU only: never touches CUDA streams
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global generators on exit, so per-sample seeding never leaks into the caller."""
    torch_state = torch.random.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)
