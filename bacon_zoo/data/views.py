"""FixMatch's views made for a whole batch at once, on whatever device holds the uint8 images.

weak   = reflect-pad by `crop_padding(size)` (4 px at 32), random crop back to size, random horizontal flip
strong = the same kind of crop/flip (its own draws), then `augment.rand_augment` (RandAugment + Cutout)
eval   = nothing
Every view ends with `normalize` (float32) and, when the network takes another size than the data
(`--input-size`, e.g. 32-px CIFAR into a backbone pretrained at 224 px), `resize` on the same device. Crop and flip are one gather from the unpadded uint8 images:
padded coordinate u maps to source pixel reflect(u - pad), which is exactly reflect padding (no padded
copy of the data set is kept). Random draws come only from the generator passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# how views are resized to the network's input size (also written into the export's pretrained_cfg)
RESIZE_INTERPOLATION = "bilinear"


def crop_padding(size: int) -> int:
    """Reflect padding of the random crop: int(size * (1 - 0.875)), at least 1 px (4 at 32 px)."""
    return max(1, int(size * 0.125))


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple:
    """(shift, scale) with x_float = shift + x_uint8 * scale, built once per device (no copy per call)."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (-m / s).float().to(device), (1.0 / (255.0 * s)).float().to(device)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [N, 3, H, W] (0..255) -> float32 (x / 255 - mean) / std, on x's device."""
    shift, scale = _affine(tuple(map(float, mean)), tuple(map(float, std)), x.device)
    return torch.addcmul(shift, x.float(), scale)


def resize(x: Tensor, size: int | None) -> Tensor:
    """Float views [N, C, H, W] -> [N, C, size, size] (bilinear, on x's device); `None` or the same
    size is a no-op. After `normalize`, which is affine, so the order of the two does not matter."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=RESIZE_INTERPOLATION, align_corners=False)


def _reflect(u: Tensor, n: int) -> Tensor:
    """Source index of position u of a reflect-padded axis of length n (u already shifted by -pad)."""
    u = u.abs()  # -1 -> 1, -2 -> 2 (reflect excludes the edge pixel)
    return torch.where(u > n - 1, 2 * (n - 1) - u, u)


@functools.lru_cache(maxsize=32)
def _crop_sources(h: int, w: int, pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every crop's source pixels, made once per (size, pad, device), as the two parts of a flat
    index into an image: row * W [2 pad + 1, H, 1] per top offset, and column [2 (2 pad + 1), 1, W]
    per left offset, unflipped then flipped."""
    offsets = torch.arange(2 * pad + 1, device=device)[:, None] - pad
    rows = _reflect(offsets + torch.arange(h, device=device), h) * w
    cols = torch.arange(w, device=device)
    cols = _reflect(offsets + torch.stack([cols, cols.flip(0)])[:, None], w)  # hflip of the crop
    return rows.view(-1, h, 1), cols.view(-1, 1, w)


def draw_crop_flip(
    n: int, size: tuple[int, int], gen: torch.Generator, pad: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (top, left) offsets into the padded image, in [0, 2 pad], and flip flags (int64
    0 / 1, as drawn).

    Drawn from `gen` on its device, in the order top, left, flip. Streams draw them for the global
    batch and keep their rank's slice, so a sample's draw does not depend on how the batch is split.
    """
    pad = crop_padding(min(size)) if pad is None else pad
    dev = gen.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    flip = torch.randint(0, 2, (n,), generator=gen, device=dev)
    return top, left, flip


def crop_flip(
    images: Tensor, idx: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int
) -> Tensor:
    """images[idx] reflect-padded by `pad`, cropped at (top, left) to the original size, then flipped
    where `flip`: uint8 [B, C, H, W] from uint8 [N, C, H, W], idx [B] and crop draws [B]; or, from
    several views' draws stacked [B, V], [V, B, C, H, W]. One gather of flat pixel indices from
    images[idx] (advanced indexing over all four dimensions is several times slower on the CPU).
    """
    b, c, h, w = idx.shape[0], *images.shape[1:]
    if pad >= min(h, w):
        raise ValueError(f"reflect padding {pad} needs images larger than {pad} px, got {h}x{w}")
    rows, cols = _crop_sources(h, w, pad, images.device)
    source = rows[top] + cols[torch.add(left, flip, alpha=2 * pad + 1)]  # [B, (V,) H, W]
    pixels = images[idx].view(b, c, h * w).gather(2, source.view(b, 1, -1).expand(b, c, -1))
    if top.dim() == 1:
        return pixels.view(b, c, h, w)
    # each view contiguous: one layout for every view (what a compiled consumer is traced for)
    return pixels.view(b, c, -1, h, w).movedim(2, 0).contiguous()
