"""The release's RandAugment + Cutout (USB's FixMatch pool) on batched uint8 tensors, on any device.

Every op takes `x: uint8 [N, 3, H, W]` and per-sample magnitudes `v: [N]` and reproduces, per sample,
what the release's PIL code does to an RGB image, down to Pillow's integer and float32 arithmetic:
- Brightness / Color / Contrast / Sharpness: `Image.blend(degenerate, img, float32(v))`, truncated;
  Color's degenerate is Pillow's fixed-point luma `(19595 R + 38470 G + 7471 B + 2^15) >> 16`,
  Contrast's the constant `int(mean(L) + 0.5)`, Sharpness's the SMOOTH 3x3 filter (float32 kernel
  1/13, 5/13, border copied).
- AutoContrast / Equalize / Posterize / Solarize: Pillow's per-channel lookup tables (ImageOps).
- Rotate / ShearX / ShearY / TranslateX / TranslateY: Pillow's affine NEAREST engine, fill 0. Pillow takes
  its "scaling" path (float accumulation) when the matrix has no cross terms (translations) and its
  16.16 fixed-point path otherwise (rotations, shears); both are reproduced, index for index.
`rand_augment` draws 3 ops with replacement and a uniform magnitude each from a `torch.Generator`, then
Cutout. `apply_params` runs each slot on fixed shapes over the whole batch: one pixel gather (the
affine ops; the identity for the others), one table lookup (the lookup-table ops; the identity for the
others) and one blend (the ImageEnhance ops; a no-op for the others), every sample's own op picked
with `torch.where`. The matrices and the magnitude-only tables of all slots are built once beforehand.
So the work and the kernel launches do not depend on the ops drawn, and nothing waits on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bacon_zoo.errors import UserError

# USB's `fixmatch_augment_pool`, in its order; ranges are (min, max) of val = min + (max - min) * U[0, 1)
OP_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0),
    "Brightness": (0.05, 0.95),
    "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95),
    "Equalize": (0.0, 1.0),
    "Identity": (0.0, 1.0),
    "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0),
    "Sharpness": (0.05, 0.95),
    "ShearX": (-0.3, 0.3),
    "ShearY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0),
    "TranslateX": (-0.3, 0.3),
    "TranslateY": (-0.3, 0.3),
}
RELEASE_OPS: tuple[str, ...] = tuple(OP_RANGES)
CUTOUT_MAX = 0.5  # Cutout side = v * W with v ~ U[0, 0.5)
CUTOUT_FILL = (125, 123, 114)

Op = Callable[[Tensor, Tensor], Tensor]


def _check(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a uint8 [N, 3, H, W] batch, got {x.dtype} {tuple(x.shape)}")


def _per_sample(v: Tensor | float | None, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Magnitudes as a [N] tensor on x's device (a scalar is broadcast)."""
    v = torch.as_tensor(0.0 if v is None else v, dtype=dtype, device=x.device)
    return v.expand(x.shape[0]) if v.dim() == 0 else v.to(dtype)


@functools.lru_cache(maxsize=128)
def _const(
    values: tuple, device: torch.device, dtype: torch.dtype, shape: tuple[int, ...] | None = None
) -> Tensor:
    """A constant tensor (in `shape`), made once per device: never per step, where on a GPU it
    would be a blocking host-to-device copy."""
    t = torch.tensor(values, dtype=dtype, device=device)
    return t if shape is None else t.view(shape)


@functools.lru_cache(maxsize=64)
def _arange(n: int, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """0..n-1, made once per device."""
    return torch.arange(n, device=device, dtype=dtype)


def _levels(device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """0..255, the input levels of a lookup table."""
    return _arange(256, device, dtype)


# --- lookup-table ops (ImageOps): build a [N, 3, 256] uint8 table ---------------------------------


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """out[n, c, p] = lut[n, c, x[n, c, p]] (lut [N, 3 or 1, 256])."""
    n, c, h, w = x.shape
    return lut.expand(n, c, 256).gather(2, x.reshape(n, c, h * w).long()).view(n, c, h, w)


def _histogram(levels: Tensor) -> Tensor:
    """Per-row 256-bin histograms of int64 levels [N, 3, P] -> float32 counts [N, 3, 256] (exact
    below 2^24); scatter_add_, which unlike `torch.bincount` does not read the largest value back to
    size its output."""
    ones = _ones(tuple(levels.shape), levels.device)
    hist = torch.zeros(*levels.shape[:-1], 256, device=levels.device)
    return hist.scatter_add_(-1, levels, ones)


@functools.lru_cache(maxsize=16)
def _ones(shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.ones(shape, device=device)


def _is_compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return is_compiling()


def _extremes(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's lowest and highest level [N, 3, 1] of uint8 levels [N, 3, P]: amin/amax on uint8
    (4x faster than aminmax on the CPU), but on int32 under torch.compile, where inductor's CPU code
    (torch 2.14) returns 0 for a uint8 min over a long row."""
    if _is_compiling():
        flat = flat.int()
    return flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)


def _autocontrast_table(lo: Tensor, hi: Tensor) -> Tensor:
    """ImageOps.autocontrast's [N, 3, 256] table from each channel's lowest and highest level
    [N, 3, 1]: int(i * scale + offset), offset = -lo * scale, clipped to 0..255."""
    spread = (hi - lo).double()  # hi >= lo: no uint8 wrap-around
    # a true division: `255.0 / tensor` multiplies by a rounded reciprocal, an ulp off Python's
    scale = _const((255.0,), lo.device, torch.float64).div(spread.clamp(min=1.0))
    i = _levels(lo.device, torch.float64)
    lut = (i * scale - lo.double() * scale).clamp(0, 255)  # + (-lo * scale): the same float64
    return torch.where(spread > 0, lut, i).to(torch.uint8)  # the cast truncates, like int()


def _equalize_table(levels: Tensor, hi: Tensor) -> Tensor:
    """ImageOps.equalize's [N, 3, 256] table from the int64 levels [N, 3, P] of an image and each
    channel's highest level hi [N, 3, 1]."""
    # integer arithmetic in float32: every value is an integer below 2^24, where a / b is exact or
    # at least 1 / b away from an integer, so floor(a / b) == a // b (int64 division, and torch's
    # float floor division, are several times slower on the CPU)
    hist = _histogram(levels)
    step = torch.floor((levels.shape[-1] - hist.gather(2, hi.long())) / 255)  # 0: a single level
    below = torch.cumsum(hist, 2) - hist  # pixels strictly below each level
    lut = torch.floor((torch.floor(step * 0.5) + below) / step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, lut, _levels(levels.device, torch.float32)).to(torch.uint8)


def _autocontrast_lut(x: Tensor, v: Tensor | None = None) -> Tensor:
    return _autocontrast_table(*_extremes(x.flatten(2)))


def _equalize_lut(x: Tensor, v: Tensor | None = None) -> Tensor:
    return _equalize_table(x.flatten(2).long(), _extremes(x.flatten(2))[1])


def _posterize_table(v: Tensor) -> Tensor:
    """[M, 256]: keep the top int(v) bits (clamped to 1..8)."""
    masks = _const(tuple(256 - 2 ** (8 - b) if b else 0 for b in range(9)), v.device, torch.uint8)
    bits = v.long().clamp(1, 8)  # int(v)
    return _levels(v.device, torch.uint8) & masks[bits].unsqueeze(-1)  # ~(2^(8-b) - 1) & 0xFF


def _solarize_table(v: Tensor) -> Tensor:
    """[M, 256]: levels >= v inverted."""
    inverted = _const(tuple(range(255, -1, -1)), v.device, torch.uint8)
    return torch.where(
        _levels(v.device) < v.unsqueeze(-1), _levels(v.device, torch.uint8), inverted
    )


def _posterize_lut(x: Tensor, v: Tensor) -> Tensor:
    return _posterize_table(_per_sample(v, x)).unsqueeze(1)


def _solarize_lut(x: Tensor, v: Tensor) -> Tensor:
    return _solarize_table(_per_sample(v, x)).unsqueeze(1)


def autocontrast(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.autocontrast(img): per channel, lo..hi stretched to 0..255, truncated; v is ignored."""
    return _apply_lut(x, _autocontrast_lut(x))


def equalize(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.equalize(img): per channel, lut[i] = (step // 2 + #pixels below i) // step."""
    return _apply_lut(x, _equalize_lut(x))


def posterize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.posterize(img, int(v)): keep the top int(v) bits (clamped to 1..8)."""
    return _apply_lut(x, _posterize_lut(x, v))


def solarize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.solarize(img, v): levels >= v are inverted."""
    return _apply_lut(x, _solarize_lut(x, v))


# --- blend ops (ImageEnhance): build the degenerate image, then Image.blend -----------------------


def _blend(degenerate: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """Image.blend(degenerate, x, v) for 0 <= v <= 1: trunc(d + float32(v) * (x - d)), in float32."""
    d = degenerate.float()
    alpha = _per_sample(v, x, torch.float32).view(-1, 1, 1, 1)
    return (d + alpha * (x.float() - d)).to(torch.uint8)  # >= 0, so the cast truncates like C's


_LUMA = (19595, 38470, 7471)


def _luma(x: Tensor) -> Tensor:
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 [N, H, W]."""
    weights = _const(_LUMA, x.device, torch.int32, (1, 3, 1, 1))
    return ((x * weights).sum(1, dtype=torch.int32) + 0x8000) >> 16  # integer: order-free


def _luma_keepdim(x: Tensor) -> Tensor:
    """_luma as [N, 1, H, W]."""
    weights = _const(_LUMA, x.device, torch.int32, (1, 3, 1, 1))
    return ((x * weights).sum(1, keepdim=True, dtype=torch.int32) + 0x8000) >> 16


# Pillow divides its float32 kernel by 13 in float32; as Python floats these are those exact values
_K1 = float(torch.tensor(1.0, dtype=torch.float32) / 13.0)
_K5 = float(torch.tensor(5.0, dtype=torch.float32) / 13.0)


def _smooth_interior(xf: Tensor) -> Tensor:
    """SMOOTH of the pixels off the border, float32 [N, 3, H-2, W-2] (exact levels), from x.float()."""
    p1 = xf * _K1  # float32 products, as in C
    left, right = p1[..., :-2], p1[..., 2:]
    across = (left + p1[..., 1:-1]).add_(right)  # KERNEL1x3, left to right, every row
    middle = (left + xf[..., 1:-1] * _K5).add_(right)[:, :, 1:-1]  # the centre row: 1, 5, 1
    ss = (across[:, :, 2:] + 0.5).add_(middle).add_(across[:, :, :-2])  # rows y+1, y, y-1
    # Pillow clips to 0..255: these sums lie in [0.5, 255.5] already; the uint8 cast truncates
    return ss.trunc_()


def _smooth_float(x: Tensor, xf: Tensor) -> Tensor:
    """smooth(x) as float32 (exact levels), from x and xf = x.float()."""
    h, w = x.shape[2:]
    out = xf.clone()  # the border copied
    if h >= 3 and w >= 3:
        out[:, :, 1:-1, 1:-1] = _smooth_interior(xf)
    return out


def smooth(x: Tensor) -> Tensor:
    """x.filter(ImageFilter.SMOOTH): Pillow's float32 3x3 sums in its order, +0.5, border copied."""
    return _smooth_float(x, x.float()).to(torch.uint8)


def _contrast_level(luma: Tensor) -> Tensor:
    """int(mean(L) + 0.5) per image from luma [N, ..., H, W], float64 [N, ..., 1, 1] (mean >= 0)."""
    h, w = luma.shape[-2:]
    mean = luma.sum((-2, -1), keepdim=True, dtype=torch.int64).double() / (h * w)
    return torch.floor(mean + 0.5)


def _brightness_degenerate(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _color_degenerate(x: Tensor) -> Tensor:
    return _luma(x).to(torch.uint8).unsqueeze(1).expand_as(x)


def _contrast_degenerate(x: Tensor) -> Tensor:
    return _contrast_level(_luma_keepdim(x)).to(torch.uint8).expand_as(x)


def brightness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Brightness(img).enhance(v): blend with black."""
    return _blend(_brightness_degenerate(x), x, v)


def color(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Color(img).enhance(v): blend with img.convert('L').convert('RGB')."""
    return _blend(_color_degenerate(x), x, v)


def contrast(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Contrast(img).enhance(v): blend with the constant int(mean(L) + 0.5)."""
    return _blend(_contrast_degenerate(x), x, v)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Sharpness(img).enhance(v): blend with the SMOOTH-filtered image."""
    return _blend(smooth(x), x, v)


# --- geometric ops: Pillow's affine NEAREST engine ------------------------------------------------


def affine_index(matrix: Tensor, h: int, w: int) -> Tensor:
    """Where each output pixel of img.transform(size, Image.AFFINE, matrix, NEAREST) reads from.

    matrix [M, 6] -> index int64 [M, H*W] into the image with a border of one zero pixel added on
    every side, flattened ((H + 2) * (W + 2) pixels): a source outside the image reads the border,
    which is Pillow's fill 0. Output pixel (x, y) reads input floor(a0 (x+.5) + a1 (y+.5) + a2,
    a3 (x+.5) + a4 (y+.5) + a5). As in Pillow's Geometry.c: a matrix without cross terms
    (a1 == a3 == 0, the translations) accumulates its coordinates in float64 (ImagingScaleAffine,
    `xo += a0`: a cumulative sum, sequential on the CPU; a GPU's parallel scan may round a sum that
    lies within a few ulps of an integer the other way); any other rounds a0, a1, a3, a4 and the
    half-pixel origin to 16.16 fixed point (affine_fixed), which decides ties exactly like Pillow.
    Both axes are computed together: [M, 2, ...] tensors, x then y. (Pillow's float fallback for
    coordinates beyond +-32768 is not reproduced.)
    """
    n, size = matrix.shape[0], max(h, w)
    dev = matrix.device
    a = matrix.double()
    # 16.16 fixed point: FIX(v) = floor(v * 65536 + 0.5) of (a0..a5, x origin, y origin)
    origin = (a[:, 2::3] + a[:, 0::3] * 0.5) + a[:, 1::3] * 0.5  # (a2 + a0/2) + a1/2, (a5 + ...)
    fixed = torch.floor(torch.cat([a, origin], 1) * 65536.0 + 0.5).int()
    grid = _arange(size, dev, torch.int32)
    # fixed path: x16 = ox + x FIX(a0) + y FIX(a1), y16 = oy + x FIX(a3) + y FIX(a4)
    col = fixed[:, 6:].unsqueeze(2) + grid * fixed[:, 0:4:3].unsqueeze(2)  # (ox, oy) + x (F0, F3)
    row = grid * fixed[:, 1:5:3].unsqueeze(2)  # y (F1, F4); int32 sums wrap like C's
    # scaling path: xo = a2 + a0/2, then xo += a0 per column (in order); y likewise with a5, a4
    step = a[:, 0::4].unsqueeze(2)  # (a0, a4)
    start = a[:, 2::3].unsqueeze(2) + step * 0.5
    sums = torch.cumsum(torch.cat([start, step.expand(n, 2, size - 1)], 2), 2)
    scaled = torch.floor(sums).clamp(-1, 1 << 14).int() << 16  # COORD(): -1 for any negative
    axis = _const(((1,), (0,)), dev, torch.bool)  # x varies along columns, y along rows
    scaling = (a[:, 1:4:2] == 0).all(1).view(n, 1, 1)
    zero = _const((0,), dev, torch.int32, ())
    col = torch.where(scaling, torch.where(axis, scaled, zero), col)
    row = torch.where(scaling, torch.where(axis, zero, scaled), row)
    # outside -> the zero border: + 1 (folded into the 16.16 column part), then x in [0, W + 1]
    col = col[:, :, :w] + (1 << 16)
    x = ((col[:, 0].unsqueeze(1) + row[:, 0, :h].unsqueeze(2)) >> 16).clamp_(0, w + 1)
    y = ((col[:, 1].unsqueeze(1) + row[:, 1, :h].unsqueeze(2)) >> 16).clamp_(0, h + 1)
    index = torch.add(x, y, alpha=w + 2).long()  # [M, H, W]
    return index.view(n, h * w)


def _gather_pixels(x: Tensor, index: Tensor) -> Tensor:
    """out[n, c, p] = x padded with a zero border [n, c, index[n, c or 0, p]] (`affine_index`)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).view(n, c, (h + 2) * (w + 2))
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def affine(x: Tensor, matrix: Tensor) -> Tensor:
    """img.transform(size, Image.AFFINE, matrix) with NEAREST and fill 0, per sample; matrix [N, 6]
    (`affine_index` says how Pillow's two paths are reproduced)."""
    return _gather_pixels(x, affine_index(matrix.to(x.device), *x.shape[2:]).unsqueeze(1))


def rotate_matrix(v: Tensor, h: int, w: int) -> Tensor:
    """The matrix img.rotate(v) hands to transform: counter-clockwise about (w/2, h/2), [N, 6] float64."""
    angle = torch.fmod(v.double(), 360.0)
    angle = torch.where(angle < 0, angle + 360.0, angle)  # Python's v % 360.0
    rad = angle * -(math.pi / 180.0)  # -math.radians(angle): negation is exact
    cos = torch.round(torch.cos(rad), decimals=15)
    sin = torch.round(torch.sin(rad), decimals=15)
    cx, cy = w / 2, h / 2
    # transform(-cx, -cy, matrix) = (a x + b y + 0.0, ...), then += centre; the + 0.0 only turns a
    # -0.0 into 0.0, which the centre added next makes no difference to; (-sin)(-cx) = sin cx
    c = ((cos * -cx) + (sin * -cy)) + cx
    f = ((sin * cx) + (cos * -cy)) + cy
    return torch.stack([cos, sin, c, -sin, cos, f], 1)


def _shear_x_matrix(v: Tensor, h: int, w: int) -> Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return torch.stack([one, v, zero, zero, one, zero], 1)


def _shear_y_matrix(v: Tensor, h: int, w: int) -> Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return torch.stack([one, zero, zero, v, one, zero], 1)


def _translate_x_matrix(v: Tensor, h: int, w: int) -> Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return torch.stack([one, zero, v * w, zero, one, zero], 1)


def _translate_y_matrix(v: Tensor, h: int, w: int) -> Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return torch.stack([one, zero, zero, zero, one, v * h], 1)


def rotate(x: Tensor, v: Tensor) -> Tensor:
    """img.rotate(v): v degrees counter-clockwise about the centre, NEAREST, fill 0."""
    return affine(x, rotate_matrix(_per_sample(v, x), *x.shape[2:]))


def shear_x(x: Tensor, v: Tensor) -> Tensor:
    """img.transform(size, AFFINE, (1, v, 0, 0, 1, 0))."""
    return affine(x, _shear_x_matrix(_per_sample(v, x), *x.shape[2:]))


def shear_y(x: Tensor, v: Tensor) -> Tensor:
    """img.transform(size, AFFINE, (1, 0, 0, v, 1, 0))."""
    return affine(x, _shear_y_matrix(_per_sample(v, x), *x.shape[2:]))


def translate_x(x: Tensor, v: Tensor) -> Tensor:
    """img.transform(size, AFFINE, (1, 0, v * W, 0, 1, 0)): the content moves left by v * W."""
    return affine(x, _translate_x_matrix(_per_sample(v, x), *x.shape[2:]))


def translate_y(x: Tensor, v: Tensor) -> Tensor:
    """img.transform(size, AFFINE, (1, 0, 0, 0, 1, v * H)): the content moves up by v * H."""
    return affine(x, _translate_y_matrix(_per_sample(v, x), *x.shape[2:]))


def identity(x: Tensor, v: Tensor | None = None) -> Tensor:
    """The image unchanged."""
    return x


OPS: dict[str, Op] = {
    "AutoContrast": autocontrast,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Equalize": equalize,
    "Identity": identity,
    "Posterize": posterize,
    "Rotate": rotate,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "Solarize": solarize,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}


# --- Cutout -------------------------------------------------------------------------------------


def _cutout_extent(params: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """(start, end, keep): float64 [N, 2] first and last (x, y) the square covers, bool [N]."""
    params = params.double()
    side = params[:, :1] * w  # v * img.size[0], for both axes
    size = _const((float(w), float(h)), params.device, torch.float64)
    low_side = _const((1.0 - w, 1.0 - h), params.device, torch.float64)
    centre = size + low_side * params[:, 1:]  # np.random.uniform(w): low + (high - low) * u
    start = torch.clamp(centre - side / 2.0, min=0).floor()  # int(max(0, x0c - s / 2))
    end = torch.minimum(start + side, size).floor()  # int(min(w, x0 + s))
    return start, end, params[:, 0] > 0


def cutout_boxes(params: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """USB's CutoutAbs rectangle from cutout draws [N, 3] = (v, u_x, u_y), each U[0, 1) (v scaled by 0.5).

    The side is v * W; the centre is the release's `np.random.uniform(w)`, `np.random.uniform(h)`:
    numpy's `uniform(low, high=1.0)` with low = W, i.e. W + (1 - W) * u, uniform on (1, W] (not
    [0, W)), computed as numpy does. Returns (boxes, keep): boxes int64 [N, 4] = (x0, y0, x1, y1) as
    handed to ImageDraw.rectangle, which fills both end coordinates (clipped to the image); keep is
    False where v == 0 (nothing drawn).
    """
    start, end, keep = _cutout_extent(params, h, w)
    return torch.cat([start, end], 1).long(), keep


def apply_cutout(x: Tensor, params: Tensor) -> Tensor:
    """Fill each sample's Cutout square (both ends inclusive, clipped) with (125, 123, 114)."""
    n, _, h, w = x.shape
    start, end, keep = _cutout_extent(params.to(x.device), h, w)
    grid = _arange(max(h, w), x.device, torch.float64)
    covered = (grid >= start.unsqueeze(2)) & (grid <= end.unsqueeze(2))  # [N, 2, size]
    mask = covered[:, 0, :w].unsqueeze(1) & covered[:, 1, :h].unsqueeze(2) & keep.view(n, 1, 1)
    mask = mask.to(torch.uint8).unsqueeze(1)
    fill = _const(CUTOUT_FILL, x.device, torch.uint8, (1, 3, 1, 1))
    return (
        x - x * mask + fill * mask
    )  # uint8: x outside, the fill inside (a broadcast where is slow)


def draw_cutout(n: int, gen: torch.Generator) -> Tensor:
    """Cutout draws [N, 3] float64: (0.5 * U, U, U); `cutout_boxes` turns them into a square."""
    u = torch.rand((n, 3), dtype=torch.float64, generator=gen, device=gen.device)
    return u * _const((CUTOUT_MAX, 1.0, 1.0), gen.device, torch.float64)


def cutout(x: Tensor, gen: torch.Generator) -> Tensor:
    """USB's Cutout with a fresh draw from `gen`: side v * W, v ~ U[0, 0.5), centre on (1, W]."""
    _check(x)
    return apply_cutout(x, draw_cutout(x.shape[0], gen))


# --- RandAugment --------------------------------------------------------------------------------


@dataclass
class RandAugmentParams:
    """Everything drawn for a batch: op indices into `ops`, their magnitudes, and the Cutout draws."""

    ops: tuple[str, ...]
    op_idx: Tensor  # int64 [N, num_ops]
    magnitude: Tensor  # float64 [N, num_ops]
    cutout: Tensor  # float64 [N, 3] (v, u_x, u_y)


def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    ops = tuple(ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise UserError(
            f"unknown RandAugment op(s) {unknown or 'none given'}; choose from {', '.join(OPS)}"
        )
    return ops


@functools.lru_cache(maxsize=16)
def _ranges(ops: tuple[str, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(lo, hi - lo) per op, float64, made once per device."""
    lo = torch.tensor([OP_RANGES[o][0] for o in ops], dtype=torch.float64, device=device)
    hi = torch.tensor([OP_RANGES[o][1] for o in ops], dtype=torch.float64, device=device)
    return lo, hi - lo


def draw_params(
    n: int, gen: torch.Generator, num_ops: int = 3, ops: Sequence[str] = RELEASE_OPS
) -> RandAugmentParams:
    """Draw `num_ops` ops per sample with replacement, a magnitude lo + (hi - lo) * U each, and Cutout.

    All on gen.device, in a fixed order (op indices, magnitudes, Cutout), so a seed fixes the batch.
    """
    ops = _check_ops(ops)
    dev = gen.device
    op_idx = torch.randint(len(ops), (n, num_ops), generator=gen, device=dev)
    u = torch.rand((n, num_ops), dtype=torch.float64, generator=gen, device=dev)
    lo, span = _ranges(ops, dev)
    magnitude = lo[op_idx] + span[op_idx] * u
    return RandAugmentParams(ops, op_idx, magnitude, draw_cutout(n, gen))


# Each op's part in a slot (1-based position in its tuple; 0: the op has no such part)
_TABLE_OPS = ("Posterize", "Solarize")  # lookup tables from the magnitude alone
_IMAGE_TABLE_OPS = ("AutoContrast", "Equalize")  # lookup tables from the slot's input image
_BLEND_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
_AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_PARTS = (_TABLE_OPS, _IMAGE_TABLE_OPS, _BLEND_OPS, _AFFINE_OPS)


def _op_codes(ops: tuple[str, ...], device: torch.device) -> Tensor:
    """int64 [len(ops), 4]: each op's code in (_TABLE_OPS, _IMAGE_TABLE_OPS, _BLEND_OPS, _AFFINE_OPS)."""
    codes = tuple(tuple(part.index(o) + 1 if o in part else 0 for part in _PARTS) for o in ops)
    return _const(codes, device, torch.int64)


@dataclass
class _Slot:
    """What one slot applies to a batch (built for all slots at once, before the first)."""

    table: Tensor  # uint8 [N, 1, 256]: Posterize / Solarize tables, the identity elsewhere
    autocontrast: Tensor  # bool [N, 1, 1]
    equalize: Tensor  # bool [N, 1, 1]
    index: Tensor  # int64 [N, 1, H*W]: the affine ops' sources (`affine_index`), the identity elsewhere
    # float32 [N, 1, 1, 1] 0/1 weights of the blend ops' degenerate images (0 for Brightness: black)
    color: Tensor
    contrast: Tensor
    sharpness: Tensor
    alpha: Tensor  # float32 [N, 1, 1, 1]: the blend factor float32(v); 1 (a no-op) for other ops


def _plan(ops: tuple[str, ...], op_idx: Tensor, v: Tensor, h: int, w: int) -> list[_Slot]:
    """Everything the slots need that does not depend on the images, for all slots at once."""
    n, s = op_idx.shape
    dev = op_idx.device
    flat_v = v.reshape(-1)
    table_c, image_c, blend_c, affine_c = _op_codes(ops, dev)[op_idx.reshape(-1)].unbind(1)
    tc = table_c.unsqueeze(1)
    table = torch.where(tc == 1, _posterize_table(flat_v), _levels(dev, torch.uint8))
    table = torch.where(tc == 2, _solarize_table(flat_v), table)
    # shears and translations: (1, v, 0, 0, 1, 0), (1, 0, v W, 0, 1, 0), ...; the identity elsewhere
    picks = affine_c.unsqueeze(1) == _const((-1, 2, 4, 3, -1, 5), dev, torch.int64)
    coefs = flat_v.unsqueeze(1) * _const((0.0, 1.0, w, 1.0, 0.0, h), dev, torch.float64)
    matrix = torch.where(picks, coefs, _const((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), dev, torch.float64))
    rotation = (affine_c == 1).unsqueeze(1)
    matrix = torch.where(rotation, rotate_matrix(flat_v, h, w), matrix)
    blend = (blend_c.unsqueeze(1) == _const((2, 3, 4), dev, torch.int64)).float()
    fields = (
        table.view(n, s, 1, 256),
        (image_c == 1).view(n, s, 1, 1),
        (image_c == 2).view(n, s, 1, 1),
        affine_index(matrix, h, w).view(n, s, 1, h * w),
        *blend.view(n, s, 3, 1, 1, 1).unbind(2),
        torch.where(blend_c > 0, flat_v.float(), 1.0).view(n, s, 1, 1, 1),
    )
    return [_Slot(*f) for f in zip(*(t.unbind(1) for t in fields))]


def _apply_slot(x: Tensor, slot: _Slot) -> Tensor:
    """One slot on the whole batch: table lookup, pixel gather, blend; each sample keeps its op's.

    Only one of the three differs from the identity for a given sample, so their order is free. The
    selections are arithmetic (0/1 weights, exact on these small integers): a broadcast
    `torch.where` over whole images is several times slower on the CPU."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    levels = flat.long()
    lo, hi = _extremes(flat)
    table = torch.where(slot.autocontrast, _autocontrast_table(lo, hi), slot.table)
    table = torch.where(slot.equalize, _equalize_table(levels, hi), table)
    y = _gather_pixels(table.gather(2, levels).view(n, c, h, w), slot.index)
    # the degenerate image of the blend op drawn; 0 for Brightness and where no blend op was drawn
    luma = _luma_keepdim(x)
    d = _smooth_float(x, x.float()).mul_(slot.sharpness)
    d.add_(luma.float().mul_(slot.color)).add_(_contrast_level(luma).float() * slot.contrast)
    return y.float().sub_(d).mul_(slot.alpha).add_(d).to(torch.uint8)  # d + alpha (y - d)


def apply_params(x: Tensor, params: RandAugmentParams) -> Tensor:
    """Apply drawn RandAugment ops slot by slot, then Cutout (fixed shapes, no host sync)."""
    _check(x)
    ops = _check_ops(params.ops)
    if x.shape[0] == 0:
        return x.clone()
    num_ops = params.op_idx.shape[1]
    if num_ops:
        op_idx = params.op_idx.to(x.device)
        magnitude = params.magnitude.to(device=x.device, dtype=torch.float64)
        for slot in _plan(ops, op_idx, magnitude, *x.shape[2:]):
            x = _apply_slot(x, slot)
    return apply_cutout(x, params.cutout.to(x.device))


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type == "cpu" or (a.index or 0) == (b.index or 0))


def rand_augment(
    x: Tensor, gen: torch.Generator, num_ops: int = 3, ops: Sequence[str] = RELEASE_OPS
) -> Tensor:
    """The release's strong-view augmentation of a uint8 [N, 3, H, W] batch: RandAugment then Cutout.

    `gen` must live on x.device. Same seed, same output (exactly on CPU; CUDA kernels are deterministic
    here too, but the float ops are not checked bit for bit against the CPU).
    """
    _check(x)
    if not _same_device(gen.device, x.device):
        raise ValueError(f"the generator is on {gen.device} but the batch is on {x.device}")
    return apply_params(x, draw_params(x.shape[0], gen, num_ops, ops))
