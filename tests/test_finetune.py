"""Fine-tuning pretrained backbones: timm optimizers and layer decay, schedules, the input size and
normalisation of a pretrained backbone, `--pretrained-file` and `import-weights`."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.optim import param_groups_weight_decay

from bacon_zoo.config import TrainConfig
from bacon_zoo.data.loaders import make_eval_loader, make_train_loaders
from bacon_zoo.data.sources import ImageSet
from bacon_zoo.errors import UserError
from bacon_zoo.hub.import_weights import match_in_order
from bacon_zoo.models import BaconNet
from bacon_zoo.train.optim import lr_factor, make_optimizer, param_groups


def _groups(opt: torch.optim.Optimizer) -> list[tuple[int, float, float]]:
    return [(len(g["params"]), g["weight_decay"], g["lr"]) for g in opt.param_groups]


# ---- optimizers and groups


def test_sgd_groups_and_steps_are_the_releases():
    """Default config: the release's two SGD groups, and the same weights after 3 steps as a
    torch.optim.SGD built the way the trainer built it before timm's factory."""
    torch.manual_seed(0)
    a = BaconNet("wrn28_2", 10)
    b = copy.deepcopy(a)
    cfg = TrainConfig()
    ref = torch.optim.SGD(
        param_groups_weight_decay(a, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
        nesterov=True, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    opt = make_optimizer(b, cfg)
    assert type(opt) is torch.optim.SGD and opt.defaults["nesterov"]
    assert _groups(opt) == _groups(ref) == [(54, 0.0, 0.03), (31, 5e-4, 0.03)]
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for model, o in ((a, ref), (b, opt)):
            out = model(x)
            (out.logits.square().mean() + out.logits_abc.mean() + out.proj.mean()).backward()
            o.step()
            o.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_adamw_and_plain_momentum():
    net = BaconNet("resnet18_cifar", 3)
    assert isinstance(make_optimizer(net, TrainConfig(opt="adamw", lr=1e-3)), torch.optim.AdamW)
    sgd = make_optimizer(net, TrainConfig(nesterov=False))
    assert not sgd.defaults["nesterov"]
    with pytest.raises(UserError, match="not a timm optimizer; did you mean adamw"):
        make_optimizer(net, TrainConfig(opt="adamww"))


def test_layer_decay_on_a_small_vit():
    """timm's layer decay over the backbone (ViT-tiny/4: embedding, 12 blocks, final norm),
    the heads in groups of their own at lr * head_lr_scale."""
    net = BaconNet("vit_tiny_patch4_32", 10)
    cfg = TrainConfig(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5, head_lr_scale=10)
    opt = make_optimizer(net, cfg)
    heads = {id(p) for m in (net.head, net.head_abc, net.proj) for p in m.parameters()}
    scales = {}
    for g in opt.param_groups:
        is_head = {id(p) in heads for p in g["params"]}
        assert len(is_head) == 1  # a group is all backbone or all heads
        scales.setdefault(is_head.pop(), set()).add(round(g["lr"] / cfg.lr, 12))
    # timm: patch embed / tokens at the bottom, one layer per block, the top at scale 1
    layers = len(scales[False])
    assert layers >= 13  # depth 12 + the embedding
    assert scales[False] == {round(0.5**k, 12) for k in range(layers)}
    assert scales[True] == {10.0}
    n_backbone = sum(len(g["params"]) for g in opt.param_groups if g["lr_scale"] != 10)
    assert n_backbone == len(list(net.backbone.parameters()))
    # no decay on the heads' biases, pos_embed / cls_token or norms
    for g in opt.param_groups:
        if any(p.ndim <= 1 for p in g["params"]):
            assert g["weight_decay"] == 0.0


def test_layer_decay_on_a_small_convnet():
    """EfficientNet-Lite0's group_matcher: stem, 7 stages' blocks (16), head conv: scales 0.8**k."""
    net = BaconNet("tf_efficientnet_lite0", 10)
    groups = param_groups(net, TrainConfig(layer_decay=0.8))
    backbone_scales = sorted({round(g["lr_scale"], 12) for g in groups[:-2]})
    n_layers = len(backbone_scales)
    assert backbone_scales == sorted(
        {round(0.8 ** (n_layers - 1 - i), 12) for i in range(n_layers)}
    )
    assert n_layers >= 10
    assert [g["lr_scale"] for g in groups[-2:]] == [1.0, 1.0]  # the heads: head_lr_scale


def test_head_lr_scale_alone_keeps_release_groups_for_the_backbone():
    net = BaconNet("wrn28_2", 10)
    opt = make_optimizer(net, TrainConfig(head_lr_scale=5.0))
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == [0.03, pytest.approx(0.15)]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


# ---- schedules


def test_lr_factor_values():
    assert [lr_factor(s, 100, 4, "constant") for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1, 1, 1]
    # FixMatch's cosine: cos(7 pi t / 16) over the post-warm-up steps
    assert lr_factor(0, 100, 0, "cosine") == 1.0
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(math.cos(7 * math.pi / 32))
    assert lr_factor(60, 100, 20, "cosine") == pytest.approx(math.cos(7 * math.pi * 0.5 / 16))
    # full cosine: 1 after warm-up, 0.5 halfway, -> 0 at the end
    assert lr_factor(10, 110, 10, "full_cosine") == 1.0
    assert lr_factor(60, 110, 10, "full_cosine") == pytest.approx(0.5)
    assert lr_factor(109, 110, 10, "full_cosine") == pytest.approx(0.0, abs=1e-3)


# ---- input size and normalisation


def _image_set(n: int = 12, size: int = 8) -> ImageSet:
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), generator=rng, dtype=torch.uint8).numpy()
    return ImageSet(images=images, labels=[i % 3 for i in range(n)])


def test_views_are_resized_on_the_device():
    data = _image_set()
    lab, unl = make_train_loaders(data, data, 4, 2, (0.5,) * 3, (0.5,) * 3, seed=0, input_size=16)
    b = next(iter(unl))
    assert b["x_w"].shape == b["x_s"].shape == (8, 3, 16, 16)
    assert next(iter(lab))["x"].shape == (4, 3, 16, 16)
    ev = next(iter(make_eval_loader(data, 5, (0.5,) * 3, (0.5,) * 3, input_size=16)))
    assert ev["x"].shape == (5, 3, 16, 16)
    # mean = std = 0.5 maps uint8 0..255 to -1..1; bilinear upsampling stays inside that range
    assert ev["x"].min() >= -1 and ev["x"].max() <= 1
    small = next(iter(make_eval_loader(data, 5, (0.5,) * 3, (0.5,) * 3)))
    assert torch.allclose(small["x"].mean(), ev["x"].mean(), atol=0.02)


def _tiny_pretrained_file(tmp_path) -> str:
    """An 'ImageNet-pretrained' EfficientNet-Lite0 file made here (random weights, 5 classes)."""
    torch.manual_seed(1)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=5)
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_pretrained_file_norm_and_size_reach_data_card_and_export(tmp_path, run_cli, tiny_train):
    """--pretrained-file loads through timm (classifier of another size dropped), the backbone's
    mean/std (0.5) and the input size reach data.json and the export's pretrained_cfg."""
    weights = _tiny_pretrained_file(tmp_path)
    run = tmp_path / "run"
    argv = tiny_train(
        run, "backbone=tf_efficientnet_lite0", f"pretrained_file={weights}", "input_size=32",
        "steps=2", "eval_every=2", "checkpoint_every=2", "algorithm=abc",
    )  # fmt: skip
    res = run_cli(argv)
    assert res.code == 0, res
    card = json.loads((run / "data.json").read_text())
    assert card["mean"] == card["std"] == [0.5, 0.5, 0.5]
    assert card["image_size"] == 32 and card["data_image_size"] == 8
    res = run_cli(["export", str(run)])
    assert res.code == 0, res
    exported = json.loads((run / "export" / "config.json").read_text())["pretrained_cfg"]
    assert exported["mean"] == exported["std"] == [0.5, 0.5, 0.5]
    assert exported["input_size"] == [3, 32, 32] and exported["interpolation"] == "bilinear"
    assert "file" not in exported  # the local path is not published
    # the first backbone tensor of step 0 came from the file, not from a random init
    cfg = TrainConfig(backbone="tf_efficientnet_lite0", pretrained_file=weights)
    from bacon_zoo.run import build_model

    net = build_model(cfg, 3)
    src = timm.create_model("tf_efficientnet_lite0", num_classes=5)
    src.load_state_dict(__import__("safetensors.torch").torch.load_file(weights))
    assert torch.equal(net.backbone.conv_stem.weight, src.conv_stem.weight)


def test_pretrained_file_errors(tmp_path, run_cli, tiny_train):
    res = run_cli(tiny_train(tmp_path / "r", f"pretrained_file={tmp_path / 'nope.safetensors'}"))
    assert res.code != 0 and "no such file" in res.err and "Traceback" not in res.err
    assert not (tmp_path / "r").exists()
    weights = _tiny_pretrained_file(tmp_path)  # EfficientNet weights into a WRN
    res = run_cli(tiny_train(tmp_path / "r2", f"pretrained_file={weights}"))
    assert res.code != 0 and "does not fit 'wrn28_2'" in res.err and "Traceback" not in res.err


# ---- import-weights


def test_match_in_order_and_refusals():
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4), c=torch.zeros(1, dtype=torch.long))
    source = OrderedDict(x=torch.ones(2, 3), y=torch.ones(4), z=torch.ones(1, dtype=torch.long))
    out = match_in_order(source, target)
    assert list(out) == ["a", "b", "c"] and torch.equal(out["b"], torch.ones(4))
    bad = OrderedDict(x=torch.ones(2, 3), y=torch.ones(5), z=torch.ones(1))
    with pytest.raises(
        UserError, match=r"tensor 1 does not fit: checkpoint 'y' \(5,\) vs timm 'b' \(4,\)"
    ):
        match_in_order(bad, target)
    with pytest.raises(UserError, match="has 2 tensors but the timm model has 3"):
        match_in_order(OrderedDict(list(source.items())[:2]), target)


def test_import_weights_end_to_end(tmp_path, run_cli):
    """A foreign .pth (renamed keys) of timm's small `test_efficientnet` -> a local-dir folder whose
    model gives the original's logits; a wrong architecture is refused with the first bad pair."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=7).eval()
    foreign = OrderedDict(
        (f"port.{i}", v.clone()) for i, v in enumerate(model.state_dict().values())
    )
    ckpt = tmp_path / "port.pth"
    torch.save(foreign, ckpt)
    out = tmp_path / "imported"
    res = run_cli(
        ["import-weights", ckpt, "--arch", "test_efficientnet", "--out", out,
         "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    )  # fmt: skip
    assert res.code == 0, res
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert tuple(loaded.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)
    res = run_cli(["import-weights", ckpt, "--arch", "test_resnet", "--out", tmp_path / "bad"])
    assert res.code != 0 and "88 tensors but the timm model has 92" in res.err
    assert "Traceback" not in res.err and not (tmp_path / "bad").exists()


def test_import_weights_refuses_code(tmp_path, run_cli):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    ckpt = tmp_path / "evil.pth"
    torch.save({"w": Payload()}, ckpt)
    res = run_cli(["import-weights", ckpt, "--arch", "test_efficientnet", "--out", tmp_path / "o"])
    assert res.code != 0 and "refused: " in res.err and "asks to run code" in res.err


# ---- LoRA (peft, optional)


@pytest.mark.slow  # a LoRA ViT run and its export
def test_lora_trains_adapters_and_heads_and_exports_merged(tmp_path, run_cli, tiny_train):
    """Only the adapters and BaconNet's heads train; the merged export gives the adapter model's logits
    and loads as a plain timm ViT."""
    pytest.importorskip("peft")
    from bacon_zoo.run import build_model

    net = build_model(TrainConfig(backbone="vit_tiny_patch4_32", lora_rank=4), 10)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.split(".")[0] in ("head", "head_abc", "proj") for n in trainable)
    assert any("blocks.11.mlp.fc2.lora_B" in n for n in trainable)
    assert not any("patch_embed" in n for n in trainable)

    run = tmp_path / "run"
    res = run_cli(
        tiny_train(run, "backbone=vit_tiny_patch4_32", "input_size=32", "lora_rank=4",
                   "steps=2", "eval_every=2", "checkpoint_every=2", "lr=0.5")
    )  # fmt: skip
    assert res.code == 0, res
    assert run_cli(["export", str(run)]).code == 0
    from bacon_zoo.run import RunDir

    ema, _ = RunDir(run).load_ema_model()
    lora_b = [p for n, p in ema.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters moved: merging is not a no-op
    plain = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True).eval()
    assert type(plain).__name__ == "VisionTransformer"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), ema.eval()(x).logits_abc, atol=1e-5)


def test_lora_targets_must_match():
    pytest.importorskip("peft")
    from bacon_zoo.run import build_model

    with pytest.raises(UserError, match="matches no linear layer"):
        build_model(TrainConfig(backbone="resnet18_cifar", lora_rank=4), 10)


def test_ema_with_batched_buffer_copy_equals_timms():
    """train.ema.ModelEma (one foreach copy for the buffers) = timm's ModelEmaV3 update, exactly."""
    from timm.utils import ModelEmaV3

    from bacon_zoo.train.ema import ModelEma

    torch.manual_seed(0)
    net = BaconNet("wrn28_2", 10)
    ours = ModelEma(net, decay=0.9, use_warmup=True, exclude_buffers=True)
    ref = ModelEmaV3(net, decay=0.9, use_warmup=True, exclude_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(3):
        net(torch.randn(4, 3, 32, 32)).logits.mean().backward()  # BN statistics move too
        opt.step()
        opt.zero_grad()
        ours.update(net, step=step)
        ref.update(net, step=step)
    a, b = ours.module.state_dict(), ref.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
