"""Views/s of the batched on-device FixMatch pipeline against a per-image PIL loader making the same views.

Batched: `bacon_zoo.data` streams (uint8 images held on the device once; crop/flip as one gather,
`augment.apply_params` for RandAugment + Cutout, normalise), timed per view kind on batches of
`--views` images, and as a whole training step (B labeled weak + mu*B unlabeled weak + strong) through
`make_train_loaders`. On CUDA also with the images held on the CPU (data_device="cpu").
PIL reference (written here, per image, one thread, what the old DataLoader path did per worker):
numpy reflect pad, PIL crop + FLIP_LEFT_RIGHT, for strong the release's RandAugment with PIL ops
(ImageOps / ImageEnhance / Image.transform, NEAREST, fill 0) and Cutout (ImageDraw, (125, 123, 114)),
then ToTensor + Normalize per image and a stack (collate).
Same views: before timing, both make views from the same draws and the uint8 results are compared.
Data: real CIFAR-10 (`--data`, else BACON_ZOO_CIFAR10, else ../shared/datasets/cifar10-jpeg; a folder or
an .npz of decoded images); synthetic uint8 32x32 images only with `--synthetic`. Without the copy and
without `--synthetic` it skips (exit 0, no JSON) and says so, like headline.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

CIFAR = common.REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
N_LABELED, N_UNLABELED = 2478, 9924  # CIFAR-10-LT (N1=1000, M1=4000, gamma 100)


def data_path(args: argparse.Namespace) -> Path:
    return args.data or Path(os.environ.get("BACON_ZOO_CIFAR10") or CIFAR)


def load_images(args: argparse.Namespace) -> tuple[Any, Any, tuple, tuple, str]:
    from bacon_zoo.data import ImageSet, load_source

    n = N_LABELED + N_UNLABELED
    if not args.synthetic:
        data = data_path(args)
        src = load_source(str(data), image_size=32)
        images, labels = src.train.images[:n], src.train.labels[:n]
        mean, std, name = src.mean, src.std, f"CIFAR-10 ({data})"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        mean, std, name = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "synthetic uint8 32x32"
    lab = ImageSet(images[:N_LABELED], labels[:N_LABELED])
    unl = ImageSet(images[N_LABELED:n], labels[N_LABELED:n])
    return lab, unl, mean, std, name


# ---------------------------------------------------------------------------------------------
# the per-image PIL reference


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs)  # NEAREST, fill 0: the release's


PIL_OPS = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, int(v)),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "TranslateX": lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}


def pil_crop_flip(image: np.ndarray, top: int, left: int, flip: bool, pad: int) -> Image.Image:
    h, w = image.shape[:2]
    padded = Image.fromarray(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    img = padded.crop((left, top, left + w, top + h))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img


def pil_rand_augment(img: Image.Image, ops: list[str], mags: list[float], cut: list[float]):
    for name, v in zip(ops, mags):
        img = PIL_OPS[name](img, v)
    # USB's CutoutAbs: side v * W, centre np.random.uniform(w), np.random.uniform(h): numpy's
    # uniform(low, high=1.0) with low = W, i.e. W + (1 - W) u, on (1, W]
    v, ux, uy = cut
    w, h = img.size
    side = v * w
    cx, cy = w + (1 - w) * ux, h + (1 - h) * uy
    x0, y0 = int(max(0, cx - side / 2.0)), int(max(0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    if v > 0:
        img = img.copy()
        ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return img


def pil_to_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize, per image."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x - mean) / std


def pil_views(images, idx, draws, params, pad, mean, std) -> torch.Tensor:
    """The per-image loader: one view per index (strong when `params`), stacked like collate."""
    top, left, flip = draws
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    out = []
    for k, i in enumerate(idx):
        img = pil_crop_flip(images[i], top[k], left[k], flip[k], pad)
        if params is not None:
            img = pil_rand_augment(img, *params[k])
        out.append(pil_to_tensor(img, m, s))
    return torch.stack(out)


def host_params(p) -> list[tuple[list[str], list[float], list[float]]]:
    ops, mags, cut = p.op_idx.cpu().tolist(), p.magnitude.cpu().tolist(), p.cutout.cpu().tolist()
    return [([p.ops[o] for o in ops[k]], mags[k], cut[k]) for k in range(len(ops))]


# ---------------------------------------------------------------------------------------------
# measurements


def agreement(images_np, device, n: int, seed: int = 0) -> dict[str, Any]:
    """Batched and PIL views from the same draws: share of identical uint8 images, per view kind."""
    from bacon_zoo.data.augment import apply_params, draw_params
    from bacon_zoo.data.loaders import images_to_tensor
    from bacon_zoo.data.views import crop_flip, crop_padding, draw_crop_flip

    images = images_to_tensor(images_np[:n], device)
    pad = crop_padding(images.shape[-1])
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.arange(n, device=device)
    draws = draw_crop_flip(n, images.shape[2:], gen, pad)
    params = draw_params(n, gen)
    weak = crop_flip(images, idx, *draws, pad)
    strong = apply_params(weak, params)
    host = [d.cpu().tolist() for d in draws]
    hp = host_params(params)
    out: dict[str, Any] = {"images": n}
    for name, ref_params, batched in (("weak", None, weak), ("strong", hp, strong)):
        same, max_diff = 0, 0
        for k in range(n):
            img = pil_crop_flip(images_np[k], host[0][k], host[1][k], bool(host[2][k]), pad)
            if ref_params is not None:
                img = pil_rand_augment(img, *ref_params[k])
            ref = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
            got = batched[k].cpu()
            same += int(torch.equal(ref, got))
            max_diff = max(max_diff, int((ref.int() - got.int()).abs().max()))
        out[name] = {"identical_share": same / n, "max_abs_diff_uint8": max_diff}
    return out


def _rate(fn, n_views: int, windows: int, device: torch.device) -> dict[str, Any]:
    fn()  # warm-up
    common.synchronize(device)
    rates = []
    for _ in range(windows):
        t0 = common.now()
        fn()
        common.synchronize(device)
        rates.append(n_views / (common.now() - t0))
    return {"views_per_s": statistics.median(rates), "windows": [round(r, 1) for r in rates]}


def batched_views(unl, mean, std, device, data_device, args) -> dict[str, Any]:
    """Weak and strong views/s of `TrainStream` on batches of `--views` images."""
    from bacon_zoo.data import TrainStream

    out = {}
    for kind in ("weak", "strong"):
        stream = TrainStream(
            unl, args.views, {"x": kind}, mean, std, seed=0, stream=1,
            device=device, data_device=data_device,
        )  # fmt: skip
        n = args.batches
        out[kind] = _rate(
            lambda s=stream, n=n: [next(s) for _ in range(n)], n * args.views, args.windows, device
        )
    return out


def batched_step(lab, unl, mean, std, device, data_device, args) -> dict[str, Any]:
    """Images/s of whole training steps from `make_train_loaders`."""
    from bacon_zoo.data import make_train_loaders

    t0 = common.now()
    it_l, it_u = make_train_loaders(
        lab, unl, args.batch_size, args.mu, mean, std, seed=0, device=device,
        data_device=data_device,
    )  # fmt: skip
    startup = common.now() - t0
    per_step = args.batch_size * (1 + 2 * args.mu)
    res = _rate(
        lambda: [(next(it_l), next(it_u)) for _ in range(args.batches)],
        per_step * args.batches,
        args.windows,
        device,
    )
    return {"images_per_s": res["views_per_s"], "windows": res["windows"], "startup_s": startup}


def pil_rates(unl, mean, std, args) -> dict[str, Any]:
    """Weak and strong views/s of the per-image PIL reference (one thread, draws made beforehand)."""
    from bacon_zoo.data.augment import draw_params
    from bacon_zoo.data.views import crop_padding, draw_crop_flip

    n, pad = args.pil_views, crop_padding(32)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(unl), (n,), generator=gen).tolist()
    draws = [d.tolist() for d in draw_crop_flip(n, (32, 32), gen, pad)]
    params = host_params(draw_params(n, gen))
    out = {}
    for kind, p in (("weak", None), ("strong", params)):
        out[kind] = _rate(
            lambda p=p: pil_views(unl.images, idx, draws, p, pad, mean, std),
            n,
            args.windows,
            torch.device("cpu"),
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="where the batched pipeline runs (default: auto)")
    p.add_argument("--views", type=int, default=448, help="views per batched call (64 * mu 7)")
    p.add_argument("--batches", type=int, default=4, help="batched calls per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--pil-views", type=int, default=448, help="images per PIL window")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mu", type=int, default=7)
    p.add_argument("--check-images", type=int, default=64, help="images for the same-views check")
    p.add_argument("--data", type=Path, default=None, help=f"CIFAR-10 copy, a folder or an .npz (default: BACON_ZOO_CIFAR10, else {CIFAR})")  # fmt: skip
    p.add_argument(
        "--synthetic", action="store_true", help="synthetic images, even if CIFAR is here"
    )
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    started = common.now()
    args = parse_args(argv)
    if not args.synthetic and not data_path(args).exists():
        print(
            f"loader: skipped, no CIFAR-10 copy at {data_path(args)} (set BACON_ZOO_CIFAR10 or "
            "--data, or pass --synthetic for synthetic images)"
        )
        return None
    device = common.get_device(args.device)
    lab, unl, mean, std, data_name = load_images(args)
    threads = torch.get_num_threads()
    print(f"loader: {data_name} on {device}, torch threads {threads}", flush=True)
    same = agreement(unl.images, device, args.check_images)
    print(f"  same views (uint8, {same['images']} images): weak {same['weak']}, strong "
          f"{same['strong']}", flush=True)  # fmt: skip
    pil = pil_rates(unl, mean, std, args)
    print(f"  PIL per image, 1 thread: weak {pil['weak']['views_per_s']:.0f}/s, strong "
          f"{pil['strong']['views_per_s']:.0f}/s", flush=True)  # fmt: skip
    placements = [("device", None)] + ([("cpu-held", "cpu")] if device.type == "cuda" else [])
    batched: dict[str, Any] = {}
    for label, data_device in placements:
        row = {"data_device": str(data_device or device)}
        row["views"] = batched_views(unl, mean, std, device, data_device, args)
        row["step"] = batched_step(lab, unl, mean, std, device, data_device, args)
        if device.type == "cpu":  # the same on one thread: per-core speed against PIL
            torch.set_num_threads(1)
            row["views_1_thread"] = batched_views(unl, mean, std, device, data_device, args)
            torch.set_num_threads(threads)
        batched[label] = row
        v = row["views"]
        print(f"  batched ({row['data_device']}): weak {v['weak']['views_per_s']:.0f}/s, strong "
              f"{v['strong']['views_per_s']:.0f}/s; step {row['step']['images_per_s']:.0f} "
              "images/s", flush=True)  # fmt: skip
    speedup = {
        f"{label}_{kind}": batched[label]["views"][kind]["views_per_s"] / pil[kind]["views_per_s"]
        for label in batched
        for kind in ("weak", "strong")
    }
    if "views_1_thread" in batched["device"]:
        for kind in ("weak", "strong"):
            speedup[f"1_thread_{kind}"] = (
                batched["device"]["views_1_thread"][kind]["views_per_s"] / pil[kind]["views_per_s"]
            )
    print("  speed-up over PIL: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedup.items()))
    payload = {
        "settings": {
            "data": data_name,
            "labeled": len(lab),
            "unlabeled": len(unl),
            "views_per_batched_call": args.views,
            "batched_calls_per_window": args.batches,
            "pil_views_per_window": args.pil_views,
            "windows": args.windows,
            "batch_size": args.batch_size,
            "mu": args.mu,
            "images_per_step": args.batch_size * (1 + 2 * args.mu),
            "torch_threads": threads,
            "pil_threads": 1,
        },
        "same_views": same,
        "pil": pil,
        "batched": batched,
        "speedup_vs_pil": speedup,
    }
    if not args.no_write:
        common.write_result("loader", device, payload, started)
    return payload


if __name__ == "__main__":
    main()
