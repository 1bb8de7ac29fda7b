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
`rand_augment` draws 3 ops with replacement and a uniform magnitude each from a `torch.Generator`, applies
them slot by slot (each op once per slot on the samples that drew it, no loop over samples), then Cutout.
"""

from __future__ import annotations

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


# Every op is one of three kinds, so that a RandAugment slot runs each kind once on all the samples
# that drew any op of that kind: a lookup table per image and channel ("lut"), a blend with a
# degenerate image ("blend"), or an affine resampling ("affine").

# --- lookup-table ops (ImageOps): build a [N, 3, 256] uint8 table ---------------------------------


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """out[n, c, p] = lut[n, c, x[n, c, p]] (one flat gather with int32 offsets)."""
    n, c, h, w = x.shape
    base = torch.arange(0, n * c * 256, 256, dtype=torch.int32, device=x.device).view(n, c, 1)
    index = (x.reshape(n, c, h * w).int() + base).view(-1)
    return lut.reshape(-1).index_select(0, index).view(n, c, h, w)


def _histogram(x: Tensor) -> Tensor:
    """Per-image, per-channel 256-bin histograms, int64 [N, 3, 256]."""
    n, c = x.shape[:2]
    base = torch.arange(0, n * c * 256, 256, dtype=torch.int32, device=x.device).view(n * c, 1)
    flat = (x.reshape(n * c, -1).int() + base).view(-1)
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)


def _autocontrast_lut(x: Tensor, v: Tensor | None = None) -> Tensor:
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    lo, hi = flat.amin(2).double(), flat.amax(2).double()
    spread = hi - lo
    # a true division: `255.0 / tensor` multiplies by a rounded reciprocal, an ulp off Python's
    scale = torch.full_like(spread, 255.0).div(torch.where(spread > 0, spread, 1.0))
    offset = -lo * scale
    i = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = torch.trunc(i * scale.unsqueeze(-1) + offset.unsqueeze(-1)).clamp(0, 255)
    return torch.where((spread > 0).unsqueeze(-1), lut, i).to(torch.uint8)  # constant: unchanged


def _equalize_lut(x: Tensor, v: Tensor | None = None) -> Tensor:
    n, c, h, w = x.shape
    hist = _histogram(x)
    top = x.reshape(n, c, -1).amax(2, keepdim=True).long()
    step = (h * w - hist.gather(2, top)) // 255  # [N, 3, 1]; 0 when a single level is present
    below = torch.cumsum(hist, 2) - hist  # pixels strictly below each level
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)  # point() clips to 0..255
    return torch.where(step > 0, lut, torch.arange(256, device=x.device)).to(torch.uint8)


def _posterize_lut(x: Tensor, v: Tensor) -> Tensor:
    bits = _per_sample(v, x).long().clamp(1, 8).view(-1, 1, 1)  # int(v)
    mask = 256 - 2 ** (8 - bits)  # ~(2 ** (8 - bits) - 1) & 0xFF
    i = torch.arange(256, device=x.device)
    return (i & mask).to(torch.uint8).expand(x.shape[0], x.shape[1], 256)


def _solarize_lut(x: Tensor, v: Tensor) -> Tensor:
    i = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = torch.where(i < _per_sample(v, x).view(-1, 1, 1), i, 255 - i)
    return lut.to(torch.uint8).expand(x.shape[0], x.shape[1], 256)


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


def _luma(x: Tensor) -> Tensor:
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 [N, H, W]."""
    xi = x.int()
    return (xi[:, 0] * 19595 + xi[:, 1] * 38470 + xi[:, 2] * 7471 + 0x8000) >> 16


# Pillow divides its float32 kernel by 13 in float32; as Python floats these are those exact values
_K1 = float(torch.tensor(1.0, dtype=torch.float32) / 13.0)
_K5 = float(torch.tensor(5.0, dtype=torch.float32) / 13.0)


def smooth(x: Tensor) -> Tensor:
    """x.filter(ImageFilter.SMOOTH): Pillow's float32 3x3 sums in its order, +0.5, border copied."""
    h, w = x.shape[2:]
    if h < 3 or w < 3:
        return x.clone()
    p1 = x.float() * _K1  # float32 products, as in C
    p5 = x[:, :, 1:-1, 1:-1].float() * _K5
    across = (p1[..., :-2] + p1[..., 1:-1]) + p1[..., 2:]  # KERNEL1x3, left to right, every row
    middle = (p1[:, :, 1:-1, :-2] + p5) + p1[:, :, 1:-1, 2:]
    ss = ((across[:, :, 2:] + 0.5) + middle) + across[:, :, :-2]  # rows y+1, y, y-1, as Pillow
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = ss.clamp(0.0, 255.0).to(torch.uint8)
    return out


def _brightness_degenerate(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _color_degenerate(x: Tensor) -> Tensor:
    return _luma(x).to(torch.uint8).unsqueeze(1).expand_as(x)


def _contrast_degenerate(x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    mean = _luma(x).view(n, -1).sum(1, dtype=torch.int64).double() / (h * w)
    level = torch.floor(mean + 0.5).to(torch.uint8)  # int(mean + 0.5), mean >= 0
    return level.view(n, 1, 1, 1).expand_as(x)


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


def affine(x: Tensor, matrix: Tensor) -> Tensor:
    """img.transform(size, Image.AFFINE, matrix) with NEAREST and fill 0, per sample; matrix [N, 6].

    Output pixel (x, y) reads input floor(a0 (x+.5) + a1 (y+.5) + a2, a3 (x+.5) + a4 (y+.5) + a5).
    As in Pillow's Geometry.c: a matrix without cross terms (a1 == a3 == 0, the translations)
    accumulates its coordinates in float64 (ImagingScaleAffine); any other rounds a0, a1, a3, a4 and
    the half-pixel origin to 16.16 fixed point (affine_fixed), which decides ties exactly like Pillow.
    (Pillow's float fallback for coordinates beyond +-32768 is not reproduced.)
    """
    n, c, h, w = x.shape
    a = matrix.to(device=x.device, dtype=torch.float64)
    a0, a1, a2, a3, a4, a5 = (t.view(n, 1) for t in a.unbind(1))
    cols = torch.arange(w, device=x.device, dtype=torch.int32).view(1, w)
    rows = torch.arange(h, device=x.device, dtype=torch.int32).view(1, h)

    def fix(t: Tensor) -> Tensor:  # FIX(v) = floor(v * 65536 + 0.5)
        return torch.floor(t * 65536.0 + 0.5).int()

    def accumulate(start: Tensor, inc: Tensor, size: int) -> Tensor:  # xo += a0, sequentially
        terms = torch.cat([start, inc.expand(n, size - 1)], 1).cpu()  # CPU scans are sequential
        sums = torch.cumsum(terms, 1).to(x.device)  # (a GPU's are not, nor bit-reproducible)
        return torch.floor(sums).clamp(-1, 1 << 14).int() << 16

    # coordinates as 16.16 sums of a per-column and a per-row part, so only one [N, H, W] add each
    scaling = (a1 == 0) & (a3 == 0)
    x_col = torch.where(
        scaling, accumulate(a2 + a0 * 0.5, a0, w), fix((a2 + a0 * 0.5) + a1 * 0.5) + cols * fix(a0)
    )
    x_row = torch.where(scaling, 0, rows * fix(a1))
    y_col = torch.where(scaling, 0, cols * fix(a3))
    y_row = torch.where(
        scaling, accumulate(a5 + a4 * 0.5, a4, h), fix((a5 + a3 * 0.5) + a4 * 0.5) + rows * fix(a4)
    )
    xin = (x_col.view(n, 1, w) + x_row.view(n, h, 1)) >> 16
    yin = (y_col.view(n, 1, w) + y_row.view(n, h, 1)) >> 16
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    index = (yin * w + xin).clamp(0, h * w - 1).long().view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return out * inside.unsqueeze(1)


def rotate_matrix(v: Tensor, h: int, w: int) -> Tensor:
    """The matrix img.rotate(v) hands to transform: counter-clockwise about (w/2, h/2), [N, 6] float64."""
    angle = torch.fmod(v.double(), 360.0)
    angle = torch.where(angle < 0, angle + 360.0, angle)  # Python's v % 360.0
    rad = -(angle * (math.pi / 180.0))  # -math.radians(angle)
    cos = torch.round(torch.cos(rad), decimals=15)
    sin = torch.round(torch.sin(rad), decimals=15)
    cx, cy = w / 2, h / 2
    c = ((cos * -cx) + (sin * -cy)) + 0.0 + cx  # transform(-cx, -cy, matrix), then += centre
    f = ((-sin * -cx) + (cos * -cy)) + 0.0 + cy
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
# (kind, builder): lut builders take (x, v), blend builders (x), affine builders (v, h, w)
_KINDS = ("identity", "lut", "blend", "affine")
_BUILDERS: dict[str, tuple[str, Callable | None]] = {
    "AutoContrast": ("lut", _autocontrast_lut),
    "Brightness": ("blend", _brightness_degenerate),
    "Color": ("blend", _color_degenerate),
    "Contrast": ("blend", _contrast_degenerate),
    "Equalize": ("lut", _equalize_lut),
    "Identity": ("identity", None),
    "Posterize": ("lut", _posterize_lut),
    "Rotate": ("affine", rotate_matrix),
    "Sharpness": ("blend", smooth),
    "ShearX": ("affine", _shear_x_matrix),
    "ShearY": ("affine", _shear_y_matrix),
    "Solarize": ("lut", _solarize_lut),
    "TranslateX": ("affine", _translate_x_matrix),
    "TranslateY": ("affine", _translate_y_matrix),
}


# --- Cutout -------------------------------------------------------------------------------------


def cutout_boxes(params: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """USB's CutoutAbs rectangle from cutout draws [N, 3] = (v, u_x, u_y), each U[0, 1) (v scaled by 0.5).

    Returns (boxes, keep): boxes int64 [N, 4] = (x0, y0, x1, y1) as handed to ImageDraw.rectangle, which
    fills both end coordinates (clipped to the image); keep is False where v == 0 (nothing drawn).
    """
    v, cx, cy = params.double().unbind(1)
    side = v * w
    x0 = torch.clamp(cx * w - side / 2.0, min=0).floor()  # int(max(0, x0c - s / 2)), non-negative
    y0 = torch.clamp(cy * h - side / 2.0, min=0).floor()
    x1 = torch.clamp(x0 + side, max=w).floor()  # int(min(w, x0 + s))
    y1 = torch.clamp(y0 + side, max=h).floor()
    return torch.stack([x0, y0, x1, y1], 1).long(), v > 0


def apply_cutout(x: Tensor, params: Tensor) -> Tensor:
    """Fill each sample's Cutout square (both ends inclusive, clipped) with (125, 123, 114)."""
    n, _, h, w = x.shape
    boxes, keep = cutout_boxes(params.to(x.device), h, w)
    x0, y0, x1, y1 = (b.view(n, 1, 1) for b in boxes.unbind(1))
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    in_cols = (cols >= x0) & (cols <= x1) & keep.view(n, 1, 1)
    mask = (in_cols & (rows >= y0) & (rows <= y1)).to(x.dtype).unsqueeze(1)
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=x.device).view(1, 3, 1, 1)
    return x - x * mask + fill * mask  # uint8 arithmetic: x outside, the fill inside (no where)


def draw_cutout(n: int, gen: torch.Generator) -> Tensor:
    """Cutout draws [N, 3] float64: (0.5 * U, U, U); the centre is (U * W, U * H)."""
    u = torch.rand((n, 3), dtype=torch.float64, generator=gen, device=gen.device)
    return u * torch.tensor([CUTOUT_MAX, 1.0, 1.0], dtype=torch.float64, device=gen.device)


def cutout(x: Tensor, gen: torch.Generator) -> Tensor:
    """USB's Cutout with a fresh draw from `gen`: side v * W, v ~ U[0, 0.5), centre uniform."""
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
    lo = torch.tensor([OP_RANGES[o][0] for o in ops], dtype=torch.float64, device=dev)
    hi = torch.tensor([OP_RANGES[o][1] for o in ops], dtype=torch.float64, device=dev)
    magnitude = lo[op_idx] + (hi - lo)[op_idx] * u
    return RandAugmentParams(ops, op_idx, magnitude, draw_cutout(n, gen))


def _apply_slot(
    x: Tensor, ops: tuple[str, ...], op_idx: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """One RandAugment slot on a batch: every sample gets its own op, each kind of op runs once.

    The samples are sorted by (kind, op), so each op's samples form a contiguous slice whose tables,
    degenerate images or matrices are built together; each kind is then applied once to its slice.
    Returns the processed batch in that sorted order and the sort order (one host sync per slot).
    """
    h, w = x.shape[2:]
    kind_of = [_KINDS.index(_BUILDERS[name][0]) for name in ops]
    rank = torch.tensor(kind_of, device=x.device)[op_idx] * len(ops) + op_idx
    order = torch.argsort(rank, stable=True)
    counts = torch.bincount(op_idx, minlength=len(ops)).tolist()
    xs, vs = x.index_select(0, order), v.index_select(0, order)
    by_kind: dict[str, list[tuple[str, int, int]]] = {kind: [] for kind in _KINDS}
    start = 0
    for k in sorted(range(len(ops)), key=lambda k: (kind_of[k], k)):
        if counts[k]:
            by_kind[_BUILDERS[ops[k]][0]].append((ops[k], start, start + counts[k]))
            start += counts[k]
    pieces = []
    for kind in _KINDS:
        groups = by_kind[kind]
        if not groups:
            continue
        lo, hi = groups[0][1], groups[-1][2]
        part, mag = xs[lo:hi], vs[lo:hi]
        if kind == "identity":
            pieces.append(part)
            continue
        built = []
        for name, a, b in groups:
            build = _BUILDERS[name][1]
            if kind == "lut":
                built.append(build(xs[a:b], vs[a:b]))
            elif kind == "blend":
                built.append(build(xs[a:b]))
            else:
                built.append(build(vs[a:b].double(), h, w))
        params = torch.cat(built) if len(built) > 1 else built[0]
        if kind == "lut":
            pieces.append(_apply_lut(part, params))
        elif kind == "blend":
            pieces.append(_blend(params, part, mag))
        else:
            pieces.append(affine(part, params))
    return (torch.cat(pieces) if len(pieces) > 1 else pieces[0]), order


def apply_params(x: Tensor, params: RandAugmentParams) -> Tensor:
    """Apply drawn RandAugment ops slot by slot, then Cutout."""
    _check(x)
    ops = _check_ops(params.ops)
    if x.shape[0] == 0:
        return x.clone()
    op_idx = params.op_idx.to(x.device)
    magnitude = params.magnitude.to(device=x.device, dtype=torch.float64)
    perm = torch.arange(x.shape[0], device=x.device)  # x[i] holds sample perm[i]
    for slot in range(op_idx.shape[1]):
        x, order = _apply_slot(x, ops, op_idx[perm, slot], magnitude[perm, slot])
        perm = perm[order]
    x = apply_cutout(x, params.cutout.to(x.device)[perm])
    return x.index_select(0, torch.argsort(perm))


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
