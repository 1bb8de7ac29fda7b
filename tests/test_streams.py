"""Batched views, resumable rank-sharded training streams and the sharded eval loader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import launch_two

from bacon_zoo.data import (
    ImageSet,
    eval_positions,
    make_eval_loader,
    make_train_loaders,
    normalize,
)
from bacon_zoo.data.views import crop_flip, crop_padding, draw_crop_flip

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _image_set(n: int, size: int = 16, seed: int = 0, unknown: bool = False) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.full(n, -1) if unknown else rng.integers(0, 4, n)
    return ImageSet(
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels.astype(np.int64)
    )


def _take(stream, k: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(k)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# views


def test_crop_padding():
    assert crop_padding(32) == 4 and crop_padding(96) == 12 and crop_padding(7) == 1


@pytest.mark.parametrize("hw", [(16, 16), (10, 13), (7, 7)])
def test_crop_flip_equals_torchvision_reference(hw):
    h, w = hw
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, h, w), dtype=torch.uint8, generator=g)
    idx = torch.tensor([3, 0, 8, 3, 5, 1, 2, 7, 6, 4, 3, 0])
    pad = crop_padding(min(h, w))
    top, left, flip = draw_crop_flip(len(idx), (h, w), g, pad)
    assert int(top.max()) <= 2 * pad and int(left.min()) >= 0 and flip.any() and not flip.all()
    out = crop_flip(images, idx, top, left, flip, pad)
    assert out.dtype == torch.uint8 and out.shape == (12, 3, h, w)
    for k, i in enumerate(idx.tolist()):
        ref = TF.pad(images[i], [pad] * 4, padding_mode="reflect")
        ref = TF.crop(ref, int(top[k]), int(left[k]), h, w)
        if flip[k]:
            ref = TF.hflip(ref)
        assert torch.equal(out[k], ref), k
    # several views' draws stacked [B, V]: each view as if cropped on its own, contiguous
    second = draw_crop_flip(len(idx), (h, w), g, pad)
    both = crop_flip(images, idx, *(torch.stack(d, 1) for d in zip((top, left, flip), second)), pad)
    assert both.shape == (2, 12, 3, h, w) and all(v.is_contiguous() for v in both.unbind())
    assert torch.equal(both[0], out) and torch.equal(both[1], crop_flip(images, idx, *second, pad))


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    y = normalize(x, MEAN, STD)
    assert y.dtype == torch.float32 and torch.allclose(y, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# training streams


def test_batches_shapes_dtypes_and_views():
    lab, unl = make_train_loaders(
        _image_set(30), _image_set(50, unknown=True), 4, 3, MEAN, STD, seed=0
    )
    (bl,), (bu,) = _take(lab, 1), _take(unl, 1)
    assert set(bl) == {"idx", "x", "y"} and set(bu) == {"idx", "x_w", "x_s", "y"}
    assert bl["x"].shape == (4, 3, 16, 16) and bl["x"].dtype == torch.float32
    assert bu["x_w"].shape == bu["x_s"].shape == (12, 3, 16, 16)
    assert bu["x_s"].dtype == torch.float32
    assert bl["idx"].dtype == torch.int64 and bl["y"].dtype == torch.int64
    assert int(bu["idx"].max()) < 50 and (bu["y"] == -1).all()
    assert not torch.equal(bu["x_w"], bu["x_s"])
    # the weak view is a crop/flip of the right image, normalised
    images = torch.from_numpy(_image_set(30).images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(_image_set(30).labels)
    assert torch.equal(bl["y"], labels[bl["idx"]])
    raw = (bl["x"] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    means = raw.mean(dim=(1, 2, 3))
    # crops keep most of an image: its mean is close to the source's (random images differ a lot)
    src = images[bl["idx"]].float().mean(dim=(1, 2, 3))
    assert (means - src).abs().max() < 8


def test_batch_is_pure_function_of_step_resume_and_seed():
    labeled, unlabeled = _image_set(10), _image_set(40, seed=1)
    s = 5  # labeled set (10) < batches * 4: the stream runs over several epochs
    full = make_train_loaders(labeled, unlabeled, 4, 2, MEAN, STD, seed=7)
    resumed = make_train_loaders(labeled, unlabeled, 4, 2, MEAN, STD, seed=7, start_step=s)
    for a, b in zip(full, resumed):
        assert _same(_take(a, s + 1)[s], _take(b, 1)[0])
        assert _same(a.batch(2), b.batch(2))  # any batch, on demand, whatever was drawn before
    other = make_train_loaders(labeled, unlabeled, 4, 2, MEAN, STD, seed=8)
    u0, u1 = full[1].batch(0), other[1].batch(0)
    assert not torch.equal(u0["idx"], u1["idx"]) and not torch.equal(u0["x_w"], u1["x_w"])
    # a new step draws new views of the same images (8 images, 8 per step: all of them each step)
    _, unl8 = make_train_loaders(labeled, _image_set(8), 4, 2, MEAN, STD, seed=7)
    b0, b1 = unl8.batch(0), unl8.batch(1)
    o0, o1 = b0["idx"].argsort(), b1["idx"].argsort()
    assert torch.equal(b0["idx"][o0], b1["idx"][o1])
    for key in ("x_w", "x_s"):
        assert not torch.equal(b0[key][o0], b1[key][o1])


def test_small_set_streams_over_epochs():
    labeled = _image_set(5)
    lab, _ = make_train_loaders(labeled, labeled, 8, 1, MEAN, STD, seed=0)
    idx = torch.cat([b["idx"] for b in _take(lab, 5)]).tolist()  # 40 draws = 8 epochs of 5
    assert all(sorted(idx[i : i + 5]) == list(range(5)) for i in range(0, 40, 5))


def test_rank_slices_disjoint_and_tile_the_global_batch():
    labeled, unlabeled = _image_set(64), _image_set(96, seed=2)
    kw = dict(mean=MEAN, std=STD, seed=3, mu=2)
    ranks = [make_train_loaders(labeled, unlabeled, 4, rank=r, world_size=2, **kw) for r in (0, 1)]
    single = make_train_loaders(labeled, unlabeled, 8, **kw)
    for s in range(3):
        for which in (0, 1):
            r0, r1 = (ranks[r][which].batch(s) for r in (0, 1))
            g = single[which].batch(s)
            assert not set(r0["idx"].tolist()) & set(r1["idx"].tolist())
            for key in g:  # same samples, same views
                assert torch.equal(torch.cat([r0[key], r1[key]]), g[key]), (s, which, key)


def test_streams_leave_global_rng_alone():
    lab, unl = make_train_loaders(_image_set(8), _image_set(8), 4, 1, MEAN, STD, seed=0)
    state = torch.get_rng_state()
    next(iter(unl)), next(iter(lab))
    assert torch.equal(state, torch.get_rng_state())


def test_explicit_cpu_data_device_same_batches():
    a = make_train_loaders(_image_set(8), _image_set(8), 4, 1, MEAN, STD, seed=0)
    b = make_train_loaders(
        _image_set(8), _image_set(8), 4, 1, MEAN, STD, seed=0, device="cpu", data_device="cpu"
    )
    assert all(_same(x.batch(1), y.batch(1)) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# eval loader


@pytest.mark.parametrize("n,batch,world", [(10, 4, 1), (10, 4, 2), (23, 4, 3), (2, 4, 3)])
def test_eval_positions_cover_once_in_order(n, batch, world):
    shards = [eval_positions(n, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same length (and batch sizes) on every rank
    loaders = [make_eval_loader(_image_set(n), batch, MEAN, STD, rank=r, world_size=world)
               for r in range(world)]  # fmt: skip
    assert len({len(ld) for ld in loaders}) == 1
    gathered = []
    for batches in zip(*(list(ld) for ld in loaders)):  # what a per-batch gather sees
        assert len({len(b["idx"]) for b in batches}) == 1
        gathered.append(torch.cat([b["idx"] for b in batches]))
    idx = torch.cat(gathered)
    assert idx[idx >= 0].tolist() == list(range(n))
    if world == 1:
        assert (idx >= 0).all()


def test_eval_loader_values_and_repeatable():
    images = _image_set(10)
    loader = make_eval_loader(images, 4, MEAN, STD)
    batches = list(loader)
    assert [len(b["idx"]) for b in batches] == [4, 4, 2] and len(loader) == 3
    assert torch.cat([b["idx"] for b in batches]).tolist() == list(range(10))
    assert torch.equal(torch.cat([b["y"] for b in batches]), torch.from_numpy(images.labels))
    x = torch.cat([b["x"] for b in batches])
    ref = normalize(torch.from_numpy(images.images).permute(0, 3, 1, 2), MEAN, STD)
    assert x.dtype == torch.float32 and torch.equal(x, ref)
    again = list(loader)
    assert all(_same(a, b) for a, b in zip(batches, again))
    # padding rows of a sharded loader: idx = y = -1
    shard = list(make_eval_loader(_image_set(11), 4, MEAN, STD, rank=1, world_size=2))
    assert [b["idx"].tolist() for b in shard] == [[4, 5, 6, 7], [10, -1]]
    assert shard[-1]["y"][-1] == -1


# ---------------------------------------------------------------------------------------------
# two processes under accelerate


@pytest.mark.slow  # two CPU processes under accelerate launch
def test_two_processes_see_disjoint_complete_batches():
    """Two interpreter start-ups + gloo: the bulk of its few seconds."""
    t0 = time.time()
    proc = launch_two("tests/dist_stream_check.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"exit {proc.returncode} after {time.time() - t0:.0f}s:\n{out[-4000:]}"
    )
    assert "DIST_STREAM_OK world=2" in out
