"""Endless, exactly resumable training streams and a sharded eval loader, with views made in batches.

The uint8 images become NCHW torch tensors once, on `data_device` (default: the training device), and
each batch's views are made there in one go (`bacon_zoo.data.views`), then copied to `device` (pinned,
non-blocking) when the two differ. Nothing in a step waits on the device: no value is read back, every
shape is fixed, and the only host data, this step's image indices, travel in one pinned non-blocking
copy (`tests/test_syncs.py` checks it).

Which images: stream position p (0, 1, 2, ...) maps to image perm_e[p mod N] of epoch e = p // N, where
perm_e is a permutation seeded by (seed, stream, e). Global batch i is positions [i*G, (i+1)*G),
G = batch * world; rank r takes the r-th slice.
Which views: a torch.Generator on `data_device`, re-seeded per step from (seed, stream, step, view),
draws the crop offsets and flips, and for the strong view the RandAugment ops, magnitudes and Cutout
(`augment.draw_params`), for the whole global batch; rank r keeps its slice. So batch i depends only on
(seed, i, rank, world_size), a sample's views do not depend on the world size, and `start_step=s` jumps
straight to batch s. CPU and CUDA generators draw different numbers: views depend on the device type.
Do not pass these through `accelerator.prepare`: they are already sharded by rank and on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from bacon_zoo.data.augment import RELEASE_OPS, RandAugmentParams, apply_params, draw_params
from bacon_zoo.data.sources import ImageSet
from bacon_zoo.data.views import crop_flip, crop_padding, draw_crop_flip, normalize, resize

LABELED_STREAM, UNLABELED_STREAM = 0, 1
# what a per-step generator seed is for (the last entry of its seed sequence)
_WEAK, _STRONG_CROP, _STRONG_AUG = 0, 1, 2
DEFAULT_UNLABELED_VIEWS = {"x_w": "weak", "x_s": "strong"}


def strong_index(view: str) -> int | None:
    """None for "weak"; i for the i-th independent strong view: "strong" is 0, "strong<i>" is i
    (its crop and RandAugment draws have their own seeds, tags 1 + 2i and 2 + 2i)."""
    if view == "weak":
        return None
    if view == "strong":
        return 0
    if view.startswith("strong") and view[6:].isdigit() and int(view[6:]) > 0:
        return int(view[6:])
    raise ValueError(f"unknown view '{view}' (weak | strong | strong<i>)")


RANDAUGMENT_OPS_PER_IMAGE = 3


def _seed(*parts: int) -> int:
    """A 63-bit generator seed from a tuple of non-negative ints (host-side, no device work)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _device(d: torch.device | str) -> torch.device:
    d = torch.device(d)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def _to(x: Tensor, device: torch.device) -> Tensor:
    """Copy a tensor to `device` without making the host wait (pinned staging for CPU -> CUDA)."""
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def images_to_tensor(images: np.ndarray, device: torch.device | str) -> Tensor:
    """uint8 NHWC numpy -> uint8 NCHW contiguous tensor on `device` (permuted there, once)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    t = torch.from_numpy(np.ascontiguousarray(images)).to(_device(device))
    return t.permute(0, 3, 1, 2).contiguous()


class StreamBatchSampler:
    """Indices of batch `step` of one rank, for any step, in O(batch) work (no replay)."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        stream: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if num_items < 1:
            raise ValueError("a training stream needs at least one image")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.stream = int(seed), int(stream)
        self.rank, self.world_size, self.start_step = rank, world_size, int(start_step)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:  # keep only the few epochs a batch can straddle
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._perms[epoch] = rng.permutation(self.num_items)
        return self._perms[epoch]

    def batch(self, step: int) -> np.ndarray:
        """Batch `step` of this rank: int64 indices into the set."""
        first = step * self.batch_size * self.world_size + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_items)
        idx = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self._perm(int(e))[offsets[sel]]
        return idx

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class TrainStream:
    """Endless iterator of {"idx", "y", <view names>} batches, all on `device`.

    `views` maps output keys to "weak" or "strong". `batch(step)` gives any batch directly.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        views: dict[str, str],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        stream: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        device: torch.device | str = "cpu",
        data_device: torch.device | str | None = None,
        input_size: int | None = None,
    ) -> None:
        self.input_size = input_size  # views are resized to it on `device` (None: the data's size)
        self.sampler = StreamBatchSampler(
            len(images), batch_size, seed, stream, rank, world_size, start_step
        )
        self.views, self.mean, self.std = dict(views), tuple(mean), tuple(std)
        self.device = _device(device)
        self.data_device = self.device if data_device is None else _device(data_device)
        self.images = images_to_tensor(images.images, self.data_device)
        self.labels = torch.as_tensor(images.labels, dtype=torch.int64).to(self.data_device)
        self.pad = crop_padding(min(self.images.shape[2:]))
        self.gen = torch.Generator(device=self.data_device)
        self.step = int(start_step)

    def _seeded(self, step: int, tag: int) -> tuple[torch.Generator, int]:
        """The generator re-seeded for (step, tag) and the global batch size."""
        s = self.sampler
        self.gen.manual_seed(_seed(s.seed, s.stream, step, tag))
        return self.gen, s.batch_size * s.world_size

    def _mine(self, draws: Tensor) -> Tensor:
        """This rank's slice of draws made for the global batch (all of them on a single process)."""
        s = self.sampler
        if s.world_size == 1:
            return draws
        return draws[s.rank * s.batch_size : (s.rank + 1) * s.batch_size]

    def draws(self, step: int) -> tuple[Tensor, list[tuple[Tensor, ...]], list[Tensor | None]]:
        """Everything batch `step` draws, on `data_device`: this rank's image indices, every view's
        crop/flip (top, left, flip) and every strong view's RandAugment + Cutout draws (op indices,
        magnitudes, Cutout; None for a weak view). Generators stay here, outside `augment`."""
        idx = _to(torch.from_numpy(self.sampler.batch(step)), self.data_device)
        crops, augs = [], []
        for view in self.views.values():
            i = strong_index(view)
            gen, n = self._seeded(step, _WEAK if i is None else _STRONG_CROP + 2 * i)
            draws = draw_crop_flip(n, self.images.shape[2:], gen, self.pad)
            crops.append(tuple(map(self._mine, draws)))
        for view in self.views.values():
            i = strong_index(view)
            if i is None:
                augs.append(None)
                continue
            gen, n = self._seeded(step, _STRONG_AUG + 2 * i)
            p = draw_params(n, gen, RANDAUGMENT_OPS_PER_IMAGE)
            augs.append(tuple(map(self._mine, (p.op_idx, p.magnitude, p.cutout))))
        return idx, crops, augs

    def augment(
        self, idx: Tensor, crops: list[tuple[Tensor, ...]], augs: list[Tensor | None]
    ) -> tuple[Tensor, list[Tensor]]:
        """(labels, uint8 views) on `data_device` from `draws`: every view's crop/flip in one gather,
        then RandAugment + Cutout on the strong ones. Pure tensor code on fixed shapes (what
        `--compile` compiles, `bacon_zoo.train.compile`)."""
        if len(crops) == 1:
            views = [crop_flip(self.images, idx, *crops[0], self.pad)]
        else:  # the views' draws stacked: [B, views]
            draws = (torch.stack(d, 1) for d in zip(*crops))
            views = list(crop_flip(self.images, idx, *draws, self.pad).unbind())
        for k, aug in enumerate(augs):
            if aug is not None:
                params = RandAugmentParams(RELEASE_OPS, *aug)
                views[k] = apply_params(views[k], params)
        return self.labels[idx], views

    def finish(self, x: Tensor) -> Tensor:
        """A uint8 view on `device` -> the float32 network input (normalised, resized)."""
        return resize(normalize(x, self.mean, self.std), self.input_size)

    def batch(self, step: int) -> dict[str, Tensor]:
        """Batch `step` of this rank, a pure function of (seed, step, rank, world_size)."""
        idx, crops, augs = self.draws(step)
        y, views = self.augment(idx, crops, augs)
        out = {"idx": _to(idx, self.device), "y": _to(y, self.device)}
        for key, x in zip(self.views, views):
            out[key] = self.finish(_to(x, self.device))
        return out

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> dict[str, Tensor]:
        batch = self.batch(self.step)
        self.step += 1
        return batch


def make_train_loaders(
    labeled: ImageSet,
    unlabeled: ImageSet,
    batch_size: int,
    mu: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    device: torch.device | str = "cpu",
    data_device: torch.device | str | None = None,
    input_size: int | None = None,
    unlabeled_views: dict[str, str] | None = None,
) -> tuple[TrainStream, TrainStream]:
    """Endless labeled {"x", "y", "idx"} and unlabeled {"x_w", "x_s", "y", "idx"} streams.

    `unlabeled_views` (the algorithm's: key -> "weak" | "strong" | "strong<i>") replaces the default
    weak + strong pair, e.g. ACR's second strong view {"x_w": "weak", "x_s": "strong", "x_s1": "strong1"}.

    Per rank and step: `batch_size` labeled weak views, `mu * batch_size` unlabeled weak + strong views;
    x float32 [n, 3, H, W] normalised with (mean, std), y / idx int64 [n], all on `device`. The uint8
    images are held and augmented on `data_device` (default `device`; "cpu" for sets that do not fit).
    `start_step=s` makes the first batch equal to batch s of a fresh stream. `input_size` resizes the
    views on `device` (the network's input size, when it differs from the images').
    """
    common = dict(
        mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, start_step=start_step,
        device=device, data_device=data_device, input_size=input_size,
    )  # fmt: skip
    lab = TrainStream(labeled, batch_size, {"x": "weak"}, stream=LABELED_STREAM, **common)
    unl = TrainStream(
        unlabeled,
        mu * batch_size,
        dict(unlabeled_views or DEFAULT_UNLABELED_VIEWS),
        stream=UNLABELED_STREAM,
        **common,
    )
    return lab, unl


def eval_positions(
    num_items: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """The test positions rank `rank` yields, batch after batch, with -1 for padding.

    Round j covers positions [j*B*W, (j+1)*B*W) (the last round is shorter); each rank takes an equal
    contiguous share m = ceil(round size / W) (= B in full rounds), rank r the r-th, padded with -1 to m
    when world_size > 1. So every rank yields the same number of batches, batch j with the same size on
    every rank, and concatenating batch j of ranks 0..W-1 and dropping the -1 entries gives positions
    in order: over all batches, every position exactly once, ascending.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    out, per_round = [], batch_size * world_size
    for start in range(0, num_items, per_round):
        end = min(start + per_round, num_items)
        m = -(-(end - start) // world_size)
        lo, hi = min(start + rank * m, end), min(start + (rank + 1) * m, end)
        take = np.arange(lo, hi, dtype=np.int64)
        if world_size > 1 and len(take) < m:
            take = np.concatenate([take, np.full(m - len(take), -1, dtype=np.int64)])
        out.append(take)
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class EvalLoader:
    """This rank's shard of a test set as {"x", "y", "idx"} batches on `device`; iterable many times.

    Order and padding: `eval_positions`. Padding rows (world_size > 1 only) have idx = -1 and y = -1,
    and x = test image 0. After `accelerator.gather` of (idx, predictions) per batch, keep idx >= 0:
    the rows are then test positions 0..N-1 in order.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        input_size: int | None = None,
    ) -> None:
        self.device, self.mean, self.std = _device(device), tuple(mean), tuple(std)
        self.input_size = input_size
        pos = eval_positions(len(images), batch_size, rank, world_size)
        self.sizes = _batch_sizes(len(images), batch_size, world_size)
        take = np.maximum(pos, 0)
        self.images = images_to_tensor(images.images[take], self.device)
        labels = np.where(pos >= 0, np.asarray(images.labels, dtype=np.int64)[take], -1)
        self.labels = torch.from_numpy(labels).to(self.device)
        self.idx = torch.from_numpy(pos).to(self.device)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        start = 0
        for n in self.sizes:
            sl = slice(start, start + n)
            x = resize(normalize(self.images[sl], self.mean, self.std), self.input_size)
            yield {"x": x, "y": self.labels[sl], "idx": self.idx[sl]}
            start += n


def _batch_sizes(num_items: int, batch_size: int, world_size: int) -> list[int]:
    """Per-rank batch sizes of `eval_positions` (the same on every rank)."""
    sizes, per_round = [], batch_size * world_size
    for start in range(0, num_items, per_round):
        sizes.append(-(-(min(per_round, num_items - start)) // world_size))
    return sizes


def make_eval_loader(
    images: ImageSet,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    input_size: int | None = None,
) -> EvalLoader:
    """This rank's shard of `images` as {"x" float32, "y" int64, "idx" int64} batches on `device`.

    Layout (which positions, in which order, padding): `eval_positions`. With world_size 1 the batches
    are simply positions [0, B), [B, 2B), ...
    """
    return EvalLoader(images, batch_size, mean, std, device, rank, world_size, input_size)
