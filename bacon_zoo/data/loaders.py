"""Endless, exactly resumable training streams and an in-order eval loader.

Stream position p (0, 1, 2, ...) maps to image perm_e[p mod N] of epoch e = p // N, where perm_e is a
permutation seeded by (seed, stream, e). Global batch i is positions [i*G, (i+1)*G), G = batch * world;
rank r takes the r-th slice. Each sample also gets an augmentation seed drawn from (seed, stream, i), so
batch i (images and augmentations) depends only on (seed, i, rank, world_size): not on workers, nor on
where the stream started. `start_step=s` jumps straight to batch s without producing the skipped ones.
Do not pass the training loaders through `accelerator.prepare`: they are already sharded by rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bacon_zoo.data.sources import ImageSet
from bacon_zoo.data.transforms import (
    eval_transform,
    preserved_rng,
    seed_all,
    strong_transform,
    weak_transform,
)

LABELED_STREAM, UNLABELED_STREAM = 0, 1


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of (index, sample seed) forever, starting at batch `start_step`."""

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

    def batch(self, step: int) -> list[tuple[int, int]]:
        """Batch `step` of this rank: (index into the set, augmentation seed) pairs."""
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_items)
        idx = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self._perm(int(e))[offsets[sel]]
        seeds = np.random.default_rng([self.seed, self.stream, 1_000_003, step]).integers(
            0, 2**63 - 1, size=global_batch, dtype=np.int64
        )[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return list(zip(idx.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class AugmentedImages(Dataset):
    """Items are (index, seed) pairs; each view is produced right after seeding from the pair's seed."""

    def __init__(
        self, images: ImageSet, views: dict[str, Callable[[np.ndarray], torch.Tensor]]
    ) -> None:
        self.images, self.views = images, views

    def _make(self, index: int, seed: int) -> dict[str, Any]:
        seed_all(seed)
        item: dict[str, Any] = {"idx": index}
        image = self.images.images[index]
        for name, view in self.views.items():
            item[name] = view(image)
        item["y"] = int(self.images.labels[index])
        return item

    def __getitem__(self, pair: tuple[int, int]) -> dict[str, Any]:
        with preserved_rng():
            return self._make(*pair)

    def __getitems__(self, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        with preserved_rng():  # one save/restore per batch, not per image
            return [self._make(*pair) for pair in pairs]


def _stream_loader(dataset: Dataset, sampler: StreamBatchSampler, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


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
    num_workers: int = 0,
    start_step: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Endless labeled ({"idx", "x", "y"}) and unlabeled ({"idx", "x_w", "x_s", "y"}) loaders.

    Labeled batches hold `batch_size` images per rank, unlabeled `mu * batch_size`; `start_step=s` makes
    the first batch equal to batch s of a fresh stream.
    """
    size = labeled.images.shape[1]
    weak = weak_transform(size, mean, std)
    strong = strong_transform(size, mean, std)
    lab = _stream_loader(
        AugmentedImages(labeled, {"x": weak}),
        StreamBatchSampler(
            len(labeled), batch_size, seed, LABELED_STREAM, rank, world_size, start_step
        ),
        num_workers,
    )
    unl = _stream_loader(
        AugmentedImages(unlabeled, {"x_w": weak, "x_s": strong}),
        StreamBatchSampler(
            len(unlabeled), mu * batch_size, seed, UNLABELED_STREAM, rank, world_size, start_step
        ),
        num_workers,
    )
    return lab, unl


class EvalImages(Dataset):
    """Normalised images in order, with their labels and positions."""

    def __init__(self, images: ImageSet, mean: Sequence[float], std: Sequence[float]) -> None:
        self.images, self.transform = images, eval_transform(mean, std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = self.transform(self.images.images[index])
        return {"x": x, "y": int(self.images.labels[index]), "idx": index}


def make_eval_loader(
    images: ImageSet,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_workers: int = 0,
) -> DataLoader:
    """In-order {"x", "y", "idx"} batches; shard it with `accelerator.prepare`."""
    return DataLoader(
        EvalImages(images, mean, std),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
