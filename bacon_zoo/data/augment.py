"""The release's RandAugment + Cutout (USB's FixMatch pool) on batched uint8 tensors, on any device.

Every op takes `x: uint8 [N, 3, H, W]` and per-sample magnitudes `v: [N]` and reproduces, per sample,
what the release's PIL code does to an RGB image, down to Pillow's integer and float32 arithmetic:
- Brightness / Color / Contrast / Sharpness: `Image.blend(degenerate, img, float32(v))`, truncated;
  Color's degenerate is Pillow's fixed-point luma `(19595 R + 38470 G + 7471 B + 2^15) >> 16`,
  Contrast's the constant `int(mean(L) + 0.5)`, Sharpness's the SMOOTH 3x3 filter (kernel 1 1 1 /
  1 5 1 / 1 1 1 over 13, + 0.5, truncated; border copied).
- AutoContrast / Equalize / Posterize / Solarize: Pillow's per-channel lookup tables (ImageOps).
- Rotate / ShearX / ShearY / TranslateX / TranslateY: Pillow's affine NEAREST engine, fill 0. Pillow takes
  its "scaling" path (float accumulation) when the matrix has no cross terms (translations) and its
  16.16 fixed-point path otherwise (rotations, shears); both are reproduced, index for index.
`rand_augment` draws 3 ops with replacement and a uniform magnitude each from a `torch.Generator`, then
Cutout. `apply_params` runs each slot on fixed shapes over the whole batch: one table lookup (the
lookup-table ops; the identity for the others), one pixel gather (the affine ops; the identity for
the others) and one blend (the ImageEnhance ops; a no-op for the others). What each sample's op needs
is looked up once for all slots from per-op constants (`_plan`): its Posterize / Solarize table, its
affine pixel index, 0/1 weights and divisors that switch the other parts off for it.
So the work and the kernel launches do not depend on the ops drawn, and nothing waits on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


@functools.lru_cache(maxsize=32)
def _border(h: int, w: int, device: torch.device) -> Tensor:
    """bool [H, W]: the outermost pixels (those SMOOTH copies)."""
    inner = torch.zeros(h, w, dtype=torch.bool, device=device)
    inner[1:-1, 1:-1] = True
    return ~inner


# --- lookup-table ops (ImageOps): build a [N, 3, 256] table ---------------------------------------


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """out[n, c, p] = lut[n, c, x[n, c, p]] (lut [N, 3 or 1, 256])."""
    n, c, h, w = x.shape
    return lut.expand(n, c, 256).gather(2, x.reshape(n, c, h * w).long()).view(n, c, h, w)


def _finish_table(table: Tensor) -> Tensor:
    """A float table (AutoContrast's unclipped values among others) -> uint8: clipped to 0..255 and
    truncated, like Pillow's int() and clipping."""
    return table.clamp_(0, 255).to(torch.uint8)


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


def _autocontrast_into(lo: Tensor, hi: Tensor, full: Tensor, table: Tensor) -> Tensor:
    """ImageOps.autocontrast's [N, 3, 256] table where `full` is 255, `table` where it is NaN (or
    where a channel has a single level), float64 and not yet clipped (`_finish_table`).

    lo, hi: each channel's lowest and highest level [N, 3, 1]; full: float64 [N, 1, 1]. The table is
    int(i * scale + offset), scale = 255 / (hi - lo), offset = -lo * scale, in Python's float64; a
    single level (scale inf) or NaN keeps `table`.
    """
    # tensor / tensor, a true division (`255.0 / tensor` multiplies by a rounded reciprocal, an
    # ulp off Python's); hi >= lo: no uint8 wrap-around
    scale = full / (hi - lo)
    i = _levels(lo.device, torch.float64)
    lut = i * scale - lo * scale  # i * scale + (-lo * scale): the same float64
    return torch.where(scale < math.inf, lut, table)


def _equalize_into(levels: Tensor, hi: Tensor, divisor: Tensor, table: Tensor) -> Tensor:
    """ImageOps.equalize's [N, 3, 256] table where `divisor` is 255, `table` where it is inf (or where
    a channel's step is 0), float (not yet clipped: `_finish_table`).

    levels: the int64 levels [N, 3, P] of the image; hi: each channel's highest level [N, 3, 1];
    divisor: float32 [N, 1, 1]. Pillow: step = (P - count of the top level) // 255; 0 keeps the
    levels; else lut[i] = (step // 2 + pixels below i) // step.
    """
    # integer arithmetic in float32: every value is an integer below 2^24, where a / b is exact or
    # at least 1 / b away from an integer, so floor(a / b) == a // b (int64 division is several
    # times slower on the CPU, and so is torch's float floor division: kept to [N, 3, 1] tensors)
    hist = _histogram(levels)
    below = torch.cumsum(hist, 2) - hist  # pixels strictly below each level
    top = below.gather(2, hi.long())  # pixels below the top level: P - its count
    step = torch.div(top, divisor, rounding_mode="floor")
    half = torch.div(step, 2, rounding_mode="floor")
    lut = torch.floor((half + below) / step)  # inf / nan where step is 0: dropped
    return torch.where(step > 0, lut, table)


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


@functools.lru_cache(maxsize=8)
def _table_bank(device: torch.device) -> Tensor:
    """Every table Posterize and Solarize can make, uint8 [265, 1, 256], by row (negative rows count
    from the end, as in indexing): Posterize's for bits 1..8 at rows 1..8 (8 bits: the identity),
    Solarize's keeping the levels below t = 0..256 at row -t (levels < v are those < ceil(v))."""
    bits = torch.arange(9, dtype=torch.float64, device=device)
    thresholds = torch.arange(-256, 0, dtype=torch.float64, device=device).neg_()
    bank = torch.cat([_posterize_table(bits), _solarize_table(thresholds)])
    bank[0] = _solarize_table(bits[:1])[0]  # t = 0: every level inverted
    return bank.unsqueeze(1)


def autocontrast(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.autocontrast(img): per channel, lo..hi stretched to 0..255, truncated; v is ignored."""
    lo, hi = _extremes(x.flatten(2))
    full = _const((255.0,), x.device, torch.float64, ())
    return _apply_lut(x, _finish_table(_autocontrast_into(lo, hi, full, _levels(x.device))))


def equalize(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.equalize(img): per channel, lut[i] = (step // 2 + #pixels below i) // step."""
    flat = x.flatten(2)
    divisor = _const((255.0,), x.device, torch.float32, ())
    table = _equalize_into(flat.long(), _extremes(flat)[1], divisor, _levels(x.device))
    return _apply_lut(x, _finish_table(table))


def posterize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.posterize(img, int(v)): keep the top int(v) bits (clamped to 1..8)."""
    return _apply_lut(x, _posterize_table(_per_sample(v, x)).unsqueeze(1))


def solarize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.solarize(img, v): levels >= v are inverted."""
    return _apply_lut(x, _solarize_table(_per_sample(v, x)).unsqueeze(1))


# --- blend ops (ImageEnhance): build the degenerate image, then Image.blend -----------------------


def _blend(degenerate: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """Image.blend(degenerate, x, v) for 0 <= v <= 1: trunc(d + float32(v) * (x - d)), in float32
    (degenerate: float32 levels, broadcast to x)."""
    alpha = _per_sample(v, x, torch.float32).view(-1, 1, 1, 1)
    out = x.float().sub_(degenerate).mul_(alpha).add_(degenerate)
    return out.to(torch.uint8)  # >= 0: the cast truncates, like C's


_LUMA = (19595, 38470, 7471)


def _luma(xf: Tensor) -> Tensor:
    """Pillow's RGB -> L, (19595 R + 38470 G + 7471 B + 0x8000) >> 16, as float32 [N, 1, H, W] from
    xf = x.float(). Exact: each weight / 2^16 times a level is a multiple of 2^-16 below 2^8, so it and
    every partial sum (+ 0.5 included) fit float32's 24 bits, in any order."""
    weights = _const(tuple(c / 65536 for c in _LUMA), xf.device, torch.float32, (1, 3, 1, 1))
    return (xf * weights).sum(1, keepdim=True).add_(0.5).floor_()


def _smooth_levels(xf: Tensor) -> Tensor:
    """SMOOTH of every pixel off the border, float32 [N, C, H, W] from xf = x.float() (the border
    holds sums over a zero padding: callers keep the input there).

    Pillow sums float32 products (kernel 1, 5 over 13) + 0.5 and truncates. The exact value S / 13 +
    0.5 (S the integer kernel sum) lies at least 1/26 from an integer, far more than float32 rounding
    at these magnitudes, so Pillow's level is round(S / 13) whatever the order of the sums (and S,
    an integer below 2^24, is exact in float32 in any order; S / 13 is never a half-integer).
    """
    rows = F.pad(xf, (1, 1, 1, 1)).unfold(3, 3, 1).sum(-1)  # [N, C, H + 2, W]: 3 pixels across
    box = rows.unfold(2, 3, 1).sum(-1)  # 3x3 sums
    return box.add_(xf, alpha=4.0).div_(13.0).round_()  # the centre weighs 5


def smooth(x: Tensor) -> Tensor:
    """x.filter(ImageFilter.SMOOTH): Pillow's 3x3 float32 filter, border copied."""
    return torch.where(
        _border(*x.shape[2:], x.device), x, _smooth_levels(x.float()).to(torch.uint8)
    )


def _contrast_level(luma: Tensor, divisor: Tensor | int) -> Tensor:
    """int(mean(L) + 0.5) per image from luma [N, 1, H, W], float32 [N, 1, 1, 1]; 0 where divisor is
    inf (else divisor is H * W). As floor((sum + HW/2) / HW) in float64: the sum is exact, and
    Python's float mean + 0.5 is never close enough to an integer to round across it (a distance of
    at least 1 / 2HW, unless exactly on it)."""
    h, w = luma.shape[-2:]
    total = luma.sum((-2, -1), keepdim=True, dtype=torch.float64)
    return torch.div(total + (h * w) / 2, divisor, rounding_mode="floor").float()


def brightness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Brightness(img).enhance(v): blend with black."""
    return _blend(_const((0.0,), x.device, torch.float32, ()), x, v)


def color(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Color(img).enhance(v): blend with img.convert('L').convert('RGB')."""
    return _blend(_luma(x.float()), x, v)


def contrast(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Contrast(img).enhance(v): blend with the constant int(mean(L) + 0.5)."""
    return _blend(_contrast_level(_luma(x.float()), x.shape[2] * x.shape[3]), x, v)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Sharpness(img).enhance(v): blend with the SMOOTH-filtered image."""
    return _blend(smooth(x).float(), x, v)


# --- geometric ops: Pillow's affine NEAREST engine ------------------------------------------------


@dataclass(frozen=True)
class _AffineGrid:
    """Constants of `affine_index` for one (H, W, device)."""

    half: Tensor  # float64 0.5
    cols: Tensor  # int32 [W]: 0..W-1
    rows: Tensor  # int32 [H, 1]: 0..H-1
    seq: Tensor  # int64 [2, 1, 1, S + 1] into a matrix: (a2, a0, a0, ...), (a5, a4, ...), S = max(H, W)
    seq_scale: Tensor  # float64 [S + 1]: (1, 0.5, 1, 1, ...)
    cross: Tensor  # int64 [2, 1, 1, 1]: (a1, a3)
    x_axis: Tensor  # int32 [2, 1, 1, 1]: (1, 0)
    y_axis: Tensor  # int32 [2, 1, 1, 1]: (0, 1)
    border: Tensor  # int32 [2, 1, 1, 1]: (1, 1) << 16, one pixel in 16.16


@functools.lru_cache(maxsize=32)
def _affine_grid(h: int, w: int, device: torch.device) -> _AffineGrid:
    s = max(h, w)

    def ints(*values: int) -> Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device).view(-1, 1, 1, 1)

    scale = torch.ones(s + 1, dtype=torch.float64, device=device)
    scale[1] = 0.5
    return _AffineGrid(
        half=torch.tensor(0.5, dtype=torch.float64, device=device),
        cols=torch.arange(w, dtype=torch.int32, device=device),
        rows=torch.arange(h, dtype=torch.int32, device=device).view(h, 1),
        seq=torch.tensor([[2] + [0] * s, [5] + [4] * s], device=device).view(2, 1, 1, s + 1),
        seq_scale=scale,
        cross=torch.tensor([1, 3], device=device).view(2, 1, 1, 1),
        x_axis=ints(1, 0),
        y_axis=ints(0, 1),
        border=ints(1 << 16, 1 << 16),
    )


def affine_index(matrix: Tensor, h: int, w: int) -> Tensor:
    """Where each output pixel of img.transform(size, Image.AFFINE, matrix, NEAREST) reads from.

    matrix [..., 6] -> index int64 [..., 1, H*W] into the image with a border of one zero pixel added
    on every side, flattened ((H + 2) * (W + 2) pixels): a source outside the image reads the border,
    which is Pillow's fill 0. Output pixel (x, y) reads input floor(a0 (x+.5) + a1 (y+.5) + a2,
    a3 (x+.5) + a4 (y+.5) + a5). As in Pillow's Geometry.c: a matrix without cross terms
    (a1 == a3 == 0, the translations) accumulates its coordinates in float64 (ImagingScaleAffine,
    `xo += a0`: a cumulative sum, sequential on the CPU; a GPU's parallel scan may round a sum that
    lies within a few ulps of an integer the other way); any other rounds a0, a1, a3, a4 and the
    half-pixel origin to 16.16 fixed point (affine_fixed), which decides ties exactly like Pillow.
    Both axes are computed together: [..., 2, 1, ...] tensors, x then y, each the sum of a part
    along the columns and a part along the rows. (Pillow's float fallback for coordinates beyond +-32768 is
    not reproduced.)
    """
    g = _affine_grid(h, w, matrix.device)
    a = matrix.double()
    col, row, trans = a.unflatten(-1, (2, 3, 1, 1, 1)).unbind(-4)  # (a0, a3), (a1, a4), (a2, a5)
    # fixed path: x16 = FIX(ox) + x FIX(a0) + y FIX(a1), y16 = FIX(oy) + x FIX(a3) + y FIX(a4), with
    # FIX(v) = floor(v * 65536 + 0.5), ox = (a2 + a0/2) + a1/2, oy = (a5 + a3/2) + a4/2
    origin = torch.add(torch.add(trans, col, alpha=0.5), row, alpha=0.5)
    fixed = torch.add(g.half, torch.stack([col, row, origin], -4), alpha=65536.0).floor_().int()
    f_col, f_row, f_origin = fixed.unbind(-4)
    along_cols = torch.addcmul(f_origin, f_col, g.cols)  # [..., 2, 1, 1, W]
    along_rows = torch.addcmul(g.border, f_row, g.rows)  # [..., 2, 1, H, 1]; + 1: the border
    # scaling path: xo = a2 + a0/2, then xo += a0 per column (in order), COORD() (any negative: -1);
    # y likewise with a5, a4, per row
    sums = torch.cumsum(a[..., g.seq] * g.seq_scale, -1)  # [..., 2, 1, 1, 1 + S]: a2, then xo
    scaled = sums.floor_().clamp_(-1, 1 << 14).int() << 16
    scaled_cols = scaled[..., 1 : w + 1] * g.x_axis
    scaled_rows = torch.addcmul(g.border, scaled[..., 1 : h + 1].transpose(-1, -2), g.y_axis)
    scaling = (a[..., g.cross] == 0).all(-4, keepdim=True)
    along_cols = torch.where(scaling, scaled_cols, along_cols)
    along_rows = torch.where(scaling, scaled_rows, along_rows)
    # outside -> the zero border: x in [0, W + 1], y in [0, H + 1] (int32 sums wrap like C's)
    x, y = (along_cols + along_rows).__irshift__(16).unbind(-4)  # [..., 1, H, W]
    index = x.clamp_(0, w + 1).add_(y.clamp_(0, h + 1), alpha=w + 2).long()
    return index.flatten(-2)


def _gather_pixels(x: Tensor, index: Tensor) -> Tensor:
    """out[n, c, p] = x with a one-pixel zero border [n, c, index[n, c, p]] (`affine_index`), [N, C, H*W]."""
    n, c, h, w = x.shape
    return F.pad(x, (1, 1, 1, 1)).view(n, c, (h + 2) * (w + 2)).gather(2, index)


def affine(x: Tensor, matrix: Tensor) -> Tensor:
    """img.transform(size, Image.AFFINE, matrix) with NEAREST and fill 0, per sample; matrix [N, 6]
    (`affine_index` says how Pillow's two paths are reproduced)."""
    n, c, h, w = x.shape
    index = affine_index(matrix.to(x.device), h, w).expand(n, c, h * w)
    return _gather_pixels(x, index).view(n, c, h, w)


@dataclass(frozen=True)
class _RotateTerms:
    """(first * first_coef + second * second_coef) + shift, from (cos, sin), per matrix entry."""

    first: Tensor  # int64 [6] into (cos, sin)
    first_coef: Tensor  # float64 [6]
    second: Tensor
    second_coef: Tensor
    shift: Tensor


@functools.lru_cache(maxsize=32)
def _rotate_terms(h: int, w: int, device: torch.device) -> _RotateTerms:
    cx, cy = w / 2, h / 2

    def f64(*v: float) -> Tensor:
        return torch.tensor(v, dtype=torch.float64, device=device)

    return _RotateTerms(
        first=torch.tensor([0, 1, 0, 1, 0, 1], device=device),
        first_coef=f64(1.0, 1.0, -cx, -1.0, 1.0, cx),
        second=torch.tensor([0, 0, 1, 0, 0, 0], device=device),
        second_coef=f64(0.0, 0.0, -cy, 0.0, 0.0, -cy),
        shift=f64(0.0, 0.0, cx, 0.0, 0.0, cy),
    )


def rotate_matrix(v: Tensor, h: int, w: int) -> Tensor:
    """The matrix img.rotate(v) hands to transform: counter-clockwise about (w/2, h/2), [..., 6] float64
    from v [...]."""
    angle = torch.remainder(v.double(), 360.0)  # Python's v % 360.0 (fmod, + 360 where negative)
    rad = angle * -(math.pi / 180.0)  # -math.radians(angle): negation is exact
    cos_sin = torch.stack([torch.cos(rad), torch.sin(rad)], -1).round_(decimals=15)
    t = _rotate_terms(h, w, v.device)
    # (cos, sin, c, -sin, cos, f): transform(-cx, -cy, matrix) = (a x + b y + 0.0, ...), then +=
    # centre: c = ((cos * -cx) + (sin * -cy)) + cx, f = ((sin * cx) + (cos * -cy)) + cy ((-sin)(-cx)
    # = sin cx; the + 0.0 only turns a -0.0 into 0.0); the other entries: v * +-1 + 0 + 0, exact
    first = cos_sin[..., t.first] * t.first_coef
    return (first + cos_sin[..., t.second] * t.second_coef) + t.shift


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


def _cutout_start(params: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """(start, side): float64 [N, 2, 1, 1] the first (x, y) the square covers, [N, 1, 1, 1] its side."""
    dev = params.device
    scales = _const((float(w), 1.0 - w, 1.0 - h), dev, torch.float64, (3, 1, 1))
    scaled = params.double().view(-1, 3, 1, 1) * scales
    side = scaled[:, :1]  # v * img.size[0], for both axes
    # np.random.uniform(w): low + (high - low) * u
    centre = scaled[:, 1:] + _const((float(w), float(h)), dev, torch.float64, (2, 1, 1))
    start = torch.sub(centre, side, alpha=0.5).clamp_(min=0).floor_()  # int(max(0, x0c - s / 2))
    return start, side


def cutout_boxes(params: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """USB's CutoutAbs rectangle from cutout draws [N, 3] = (v, u_x, u_y), each U[0, 1) (v scaled by 0.5).

    The side is v * W; the centre is the release's `np.random.uniform(w)`, `np.random.uniform(h)`:
    numpy's `uniform(low, high=1.0)` with low = W, i.e. W + (1 - W) * u, uniform on (1, W] (not
    [0, W)), computed as numpy does. Returns (boxes, keep): boxes int64 [N, 4] = (x0, y0, x1, y1) as
    handed to ImageDraw.rectangle, which fills both end coordinates (clipped to the image); keep is
    False where v == 0 (nothing drawn).
    """
    start, side = _cutout_start(params, h, w)
    size = _const((float(w), float(h)), params.device, torch.float64, (2, 1, 1))
    end = torch.minimum(start + side, size).floor()  # int(min(w, x0 + s))
    return torch.cat([start, end], 1).flatten(1).long(), side.flatten() > 0


@functools.lru_cache(maxsize=32)
def _cutout_grids(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """float64 columns [W] and rows [H, 1]."""
    return _arange(w, device, torch.float64), _arange(h, device, torch.float64).view(h, 1)


def apply_cutout(x: Tensor, params: Tensor) -> Tensor:
    """Fill each sample's Cutout square (both ends inclusive, clipped) with (125, 123, 114)."""
    start, side = _cutout_start(params.to(x.device), *x.shape[2:])
    # pixel p is covered where start <= p <= start + side: int() and min(W, .) of `cutout_boxes`'
    # end drop only what no pixel lies in; an end before the start where v == 0 (nothing drawn)
    end = start + torch.where(side > 0, side, _const((-1.0,), x.device, torch.float64, ()))
    cols, rows = _cutout_grids(*x.shape[2:], x.device)
    across = (cols >= start) & (cols <= end)  # [N, 2, 1, W]: x's (and y's, unused)
    down = (rows >= start) & (rows <= end)  # [N, 2, H, 1]
    inside = across[:, :1] & down[:, 1:]  # [N, 1, H, W]
    fill = _const(CUTOUT_FILL, x.device, torch.uint8, (1, 3, 1, 1))
    return (fill - x).mul_(inside).add_(x)  # uint8, modulo 256: the fill inside, x outside


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


_BLEND_OPS = ("Brightness", "Color", "Contrast", "Sharpness")


@dataclass(frozen=True)
class _OpConstants:
    """Per-op constants of a slot, one row per op of `ops` (looked up with the drawn op indices)."""

    table_code: Tensor  # float64 [K, 3]: (divisor, low, high) of the `_table_bank` row
    matrix: Tensor  # float64 [K, 3, 6]: affine base, magnitude coefficients, rotation weight
    autocontrast: Tensor  # float64 [K, 1, 1]: 255 for AutoContrast, else NaN
    equalize: Tensor  # float32 [K, 1, 1]: 255 for Equalize, else inf
    sharpness: Tensor  # float32 [K, 1, 1, 1]: the SMOOTH image's weight in the degenerate image
    color: Tensor  # float32 [K, 1, 1, 1]: the luma's weight
    contrast: Tensor  # float64 [K, 1, 1, 1]: H*W for Contrast (the mean's divisor), else inf
    keep: Tensor  # bool [K, 1, H, W]: where the blend is a no-op (alpha 1)


@functools.lru_cache(maxsize=16)
def _op_constants(ops: tuple[str, ...], h: int, w: int, device: torch.device) -> _OpConstants:
    k = len(ops)

    def per_op(
        values: dict[str, object], default: object, dtype: torch.dtype, *shape: int
    ) -> Tensor:
        rows = [values.get(o, default) for o in ops]
        return torch.tensor(rows, dtype=dtype, device=device).view(k, *shape)

    f32, f64, inf = torch.float32, torch.float64, math.inf
    # the table row: clamp(v // divisor, low, high); Posterize: int(v) in 1..8 bits (clamped, int()
    # and floor agree), Solarize: -t with t = ceil(v) in 0..256; any other op: 0 // inf -> 8 bits
    codes = {"Posterize": (1.0, 1.0, 8.0), "Solarize": (-1.0, -256.0, 0.0)}
    # (base, coefficients of v, rotation weight): shears and translations base + v * coefficients,
    # Rotate `rotate_matrix`, any other op the identity matrix
    eye, zero = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0,) * 6
    matrices = {
        "ShearX": (eye, (0.0, 1.0, 0.0, 0.0, 0.0, 0.0), zero),
        "ShearY": (eye, (0.0, 0.0, 0.0, 1.0, 0.0, 0.0), zero),
        "TranslateX": (eye, (0.0, 0.0, float(w), 0.0, 0.0, 0.0), zero),
        "TranslateY": (eye, (0.0, 0.0, 0.0, 0.0, 0.0, float(h)), zero),
        "Rotate": (zero, zero, (1.0,) * 6),
    }
    # alpha is 1 for ops that blend nothing, and on Sharpness's border, which SMOOTH copies
    keep = torch.stack(
        [
            _border(h, w, device)
            if o == "Sharpness"
            else torch.full((h, w), o not in _BLEND_OPS, device=device)
            for o in ops
        ]
    )
    return _OpConstants(
        table_code=per_op(codes, (inf, 8.0, 8.0), f64, 3),
        matrix=per_op(matrices, (eye, zero, zero), f64, 3, 6),
        autocontrast=per_op({"AutoContrast": 255.0}, math.nan, f64, 1, 1),
        equalize=per_op({"Equalize": 255.0}, inf, f32, 1, 1),
        sharpness=per_op({"Sharpness": 1.0}, 0.0, f32, 1, 1, 1),
        color=per_op({"Color": 1.0}, 0.0, f32, 1, 1, 1),
        contrast=per_op({"Contrast": float(h * w)}, inf, f64, 1, 1, 1),
        keep=keep.view(k, 1, h, w),
    )


@dataclass
class _Slot:
    """What one slot applies to a batch (built for all slots at once, before the first)."""

    table: Tensor  # uint8 [N, 1, 256]: Posterize / Solarize tables, the identity elsewhere
    autocontrast: Tensor  # float64 [N, 1, 1]: 255 for AutoContrast (`_autocontrast_into`), else NaN
    equalize: Tensor  # float32 [N, 1, 1]: 255 for Equalize (`_equalize_into`), else inf
    index: Tensor  # int64 [N, 3, H*W]: the affine ops' sources (`affine_index`), the identity elsewhere
    # the degenerate image of the blend ops: SMOOTH * sharpness + luma * color + contrast level
    # (0 for Brightness and where no blend op was drawn)
    sharpness: Tensor  # float32 [N, 1, 1, 1], 0/1
    color: Tensor  # float32 [N, 1, 1, 1], 0/1
    contrast: Tensor  # float64 [N, 1, 1, 1]: H*W for Contrast (`_contrast_level`), else inf
    alpha: Tensor  # float32 [N, 1, H, W]: the blend factor float32(v); 1 (a no-op) elsewhere


def _plan(ops: tuple[str, ...], op_idx: Tensor, v: Tensor, h: int, w: int) -> list[_Slot]:
    """Everything the slots need that does not depend on the images, for all slots at once."""
    n, s = op_idx.shape
    dev = op_idx.device
    k = _op_constants(ops, h, w, dev)
    divisor, low, high = k.table_code[op_idx].unbind(-1)
    row = torch.div(v, divisor, rounding_mode="floor").clamp_(low, high).long()
    base, coefs, rotation = k.matrix[op_idx].unbind(-2)
    # every product below is exact (a coefficient 0 or 1, or a single term v * W)
    matrix = torch.addcmul(base, v.unsqueeze(-1), coefs)
    matrix = torch.addcmul(matrix, rotate_matrix(v, h, w), rotation)
    one = _const((1.0,), dev, torch.float32, ())
    fields = (
        _table_bank(dev)[row],
        k.autocontrast[op_idx],
        k.equalize[op_idx],
        affine_index(matrix, h, w).expand(n, s, 3, h * w),
        k.sharpness[op_idx],
        k.color[op_idx],
        k.contrast[op_idx],
        torch.where(k.keep[op_idx], one, v.float().view(n, s, 1, 1, 1)),
    )
    return [_Slot(*f) for f in zip(*(t.unbind(1) for t in fields))]


def _apply_slot(x: Tensor, slot: _Slot) -> Tensor:
    """One slot on the whole batch: table lookup, pixel gather, blend; each sample keeps its op's.

    Only one of the three differs from the identity for a given sample, so their order is free. The
    selections are arithmetic (0/1 weights, exact on these small integers, and divisors that zero a
    part): a broadcast `torch.where` over whole images is several times slower on the CPU."""
    n, c, h, w = x.shape
    # the pixels first: a table op's index is the identity, an affine op's table the identity
    moved = _gather_pixels(x, slot.index)
    levels = moved.long()
    lo, hi = _extremes(moved)
    table = _autocontrast_into(lo, hi, slot.autocontrast, slot.table)
    table = _finish_table(_equalize_into(levels, hi, slot.equalize, table)).float()
    y = table.gather(2, levels).view(n, c, h, w)  # float32: mixed-dtype arithmetic is slow
    xf = x.float()
    luma = _luma(xf)
    d = torch.addcmul(_contrast_level(luma, slot.contrast), luma, slot.color)
    # Sharpness's border is SMOOTH's partial sum here: alpha 1 there keeps y (= x) exactly
    d = torch.addcmul(d, _smooth_levels(xf), slot.sharpness)
    return y.sub_(d).mul_(slot.alpha).add_(d).to(torch.uint8)  # d + alpha (y - d), in float32


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
