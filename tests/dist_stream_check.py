"""Two-process check that the training streams and the eval loader shard exactly by rank.

Run by tests/test_streams.py as `accelerate launch --multi_gpu --num_processes 2 ... tests/dist_stream_check.py`
with ACCELERATE_USE_CPU=1. Per step, the two ranks' batches must be disjoint, and together (gathered in
rank order) equal the world-size-1 global batch: indices, labels and views. The eval shards, gathered
per batch with the padding dropped, must give every test position once, in order.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from bacon_zoo.data import ImageSet, make_eval_loader, make_train_loaders

B, MU, STEPS, N_L, N_U, N_TEST = 4, 2, 4, 16, 48, 11  # sets tile whole epochs
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n))


def main() -> None:
    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    assert world == 2, f"expected 2 processes, got {world}"
    lab, unl = _images(N_L, 0), _images(N_U, 1)
    kw = dict(mu=MU, mean=MEAN, std=STD, seed=5, device=acc.device)
    mine = make_train_loaders(lab, unl, B, rank=rank, world_size=world, **kw)
    ref = make_train_loaders(lab, unl, B * world, **kw)  # the global batch, world size 1
    for stream, ref_stream in zip(mine, ref):
        for step, batch in zip(range(STEPS), stream):
            both = {k: acc.gather(v) for k, v in batch.items()}  # rank 0's rows, then rank 1's
            half = len(both["idx"]) // 2
            a, b = set(both["idx"][:half].tolist()), set(both["idx"][half:].tolist())
            assert not a & b, f"ranks overlap at step {step}: {sorted(a & b)}"
            glob = ref_stream.batch(step)
            for k, v in both.items():
                assert torch.equal(v, glob[k]), f"step {step} key {k} differs from the global batch"
    seen = []
    for batch in make_eval_loader(_images(N_TEST, 2), 3, MEAN, STD, acc.device, rank, world):
        seen.append(acc.gather(batch["idx"]))
    idx = torch.cat(seen)
    assert idx[idx >= 0].tolist() == list(range(N_TEST)), idx.tolist()
    if acc.is_main_process:
        print(f"DIST_STREAM_OK world={world}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
