"""Backbones, the factory and BaconNet: shapes, timm API parity, export round trips, error messages."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf

from bacon_zoo.errors import UserError
from bacon_zoo.models import (
    BaconNet,
    BaconOutput,
    create_backbone,
    list_backbones,
    plain_timm_spec,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = [
    "wrn28_2",
    "wrn37_2",
    "resnet18_cifar",
    "vit_tiny_patch4_32",
    "vit_tiny_patch2_32",
    "resnet18",
]
BIG = ["wrn28_8", "resnet34_cifar", "resnet50_cifar", "vit_small_patch4_32"]  # forward only


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batch(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_names():
    assert sorted(list_backbones()) == sorted(SMALL[:-1] + BIG)
    for name in list_backbones():
        cfg = timm.models.get_pretrained_cfg(name)
        assert tuple(cfg.input_size) == ((3, 96, 96) if name == "wrn37_2" else (3, 32, 32))


def test_wrn28_2_matches_usb():
    m = timm.create_model("wrn28_2", num_classes=10)
    assert n_params(m) == 1_467_626  # USB's WRN-28-2
    assert m.num_features == 128 and m.num_classes == 10
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert all(b.momentum == 0.001 for b in bns)
    assert m.bn1.eps == 1e-3 and all(b.eps == 1e-5 for b in bns if b is not m.bn1)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert m.conv1.bias is not None and all(c.bias is None for c in convs if c is not m.conv1)
    acts = [a for a in m.modules() if isinstance(a, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.1 for a in acts)
    first = [s.layer[0].activate_before_residual for s in m.stages]
    assert first == [True, False, False]
    x = batch()
    fmap = m.forward_features(x)
    assert fmap.shape == (2, 128, 8, 8)
    assert m.forward_head(fmap, pre_logits=True).shape == (2, 128)
    assert m(x).shape == (2, 10)
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["classifier"] == "fc"
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465) and cfg["std"] == (0.2471, 0.2435, 0.2616)
    assert timm.create_model("wrn28_2").num_classes == 10  # the cfg's default
    assert "block1.layer.0.convShortcut.weight" in m.state_dict()  # USB's parameter names
    assert n_params(timm.create_model("wrn28_8", num_classes=100, device="meta")) == 23_401_028
    assert n_params(timm.create_model("wrn37_2", num_classes=10, device="meta")) == 5_929_450


def test_wrn_unused_bn_is_tied_with_zero_gradient():
    """Stage 2/3 first blocks: bn1 runs (its running stats move, as in USB) and gets a zero gradient."""
    m = timm.create_model("wrn28_2", num_classes=10).train()
    bn = m.block2.layer[0].bn1
    m(batch(4)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert torch.all(bn.weight.grad == 0) and torch.all(bn.bias.grad == 0)
    assert bn.num_batches_tracked.item() == 1 and not torch.all(bn.running_mean == 0)
    assert bool(m.block1.layer[0].bn1.weight.grad.abs().sum() > 0)  # stage 1 uses its bn1


def test_wrn_torchscript_and_intermediates():
    m = timm.create_model("wrn28_2", num_classes=10).eval()
    x = batch()
    with torch.no_grad():
        ref = m(x)
        assert torch.equal(torch.jit.script(m)(x), ref)
        final, inter = m.forward_intermediates(x)
        assert torch.equal(final, m.forward_features(x))
        assert [t.shape[1] for t in inter] == [16, 32, 64, 128]
        last = m.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        assert torch.equal(last[0], final)
        early = m.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[1])


def test_factory_device_dtype():
    """timm passes device/dtype to every model; the CIFAR stem must follow them too."""
    for name in ("wrn28_2", "resnet18_cifar", "vit_tiny_patch4_32"):
        m = timm.create_model(name, device="meta", dtype=torch.bfloat16)
        tensors = [*m.parameters(), *m.buffers()]
        assert all(t.device.type == "meta" for t in tensors), name
        assert all(t.dtype == torch.bfloat16 for t in m.parameters()), name
    m = timm.create_model("resnet18_cifar", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        assert m(batch().bfloat16()).dtype == torch.bfloat16


def test_wrn37_2_is_usb_stl10_variant():
    m = timm.create_model("wrn37_2", num_classes=10)
    assert m.num_features == 256 and len(m.stages) == 4
    assert m.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 256, 6, 6)


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward(name):
    """BaconNet on each backbone: documented shapes, and gradients reach every backbone parameter."""
    net = BaconNet(name, num_classes=10, proj_dim=16)
    out = net(batch())
    assert isinstance(out, BaconOutput)
    assert out.feat.shape == (2, net.backbone.num_features) and out.proj.shape == (2, 16)
    assert out.logits.shape == out.logits_abc.shape == (2, 10)
    sum(t.sum() for t in out).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", BIG)
def test_forward_big(name):
    net = BaconNet(name, num_classes=10, proj_dim=32).eval()
    with torch.no_grad():
        feat, logits, logits_abc, proj = net(batch())
    assert feat.shape == (2, net.num_features) and proj.shape == (2, 32)
    assert logits.shape == logits_abc.shape == (2, 10)


def test_cifar_resnet_keeps_resolution():
    m = timm.create_model("resnet18_cifar", num_classes=10)
    assert isinstance(m, timm.models.resnet.ResNet)
    assert (
        m.conv1.kernel_size == (3, 3)
        and m.conv1.stride == (1, 1)
        and isinstance(m.maxpool, nn.Identity)
    )
    assert m.forward_features(batch()).shape == (2, 512, 4, 4)
    assert [f["reduction"] for f in m.feature_info] == [1, 1, 2, 4, 8]


def test_features_only():
    feats = timm.create_model("wrn28_2", features_only=True)(batch())
    assert [tuple(f.shape[1:]) for f in feats] == [
        (16, 32, 32),
        (32, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
    ]


@pytest.mark.parametrize("name", ["wrn28_2", "resnet18"])
def test_reset_and_get_classifier_like_timm(name):
    m = timm.create_model(name, num_classes=10)
    d = m.num_features
    assert isinstance(m.get_classifier(), nn.Linear) and m.get_classifier().out_features == 10
    m.reset_classifier(0)
    assert isinstance(m.get_classifier(), nn.Identity) and m.num_classes == 0
    assert m(batch()).shape == (2, d)
    m.reset_classifier(5, global_pool="catavgmax")
    assert m.get_classifier().in_features == 2 * d and m.head_hidden_size == 2 * d
    assert m(batch()).shape == (2, 5)
    m.reset_classifier(3)  # None keeps the pooling
    assert m.get_classifier().in_features == 2 * d


def test_save_for_hf_roundtrip(tmp_path):
    m = timm.create_model("wrn28_2", num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics
        m(batch(8))
    m.eval()
    save_for_hf(m, tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = batch()
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    assert tuple(loaded.pretrained_cfg["mean"]) == m.pretrained_cfg["mean"]


@pytest.mark.parametrize("name", ["wrn28_2", "resnet18_cifar", "vit_tiny_patch4_32", "resnet18"])
def test_to_timm_classifier(name):
    net = BaconNet(name, num_classes=7).eval()
    x = batch()
    with torch.no_grad():
        ref = net(x)
        for head, logits in (("abc", ref.logits_abc), ("main", ref.logits)):
            clf = net.to_timm_classifier(head)
            assert type(clf) is type(net.backbone) and isinstance(clf.get_classifier(), nn.Linear)
            assert not clf.training
            assert torch.equal(clf(x), logits)


def test_bacon_net_export_roundtrip(tmp_path):
    net = BaconNet("wrn28_2", num_classes=10).eval()
    save_for_hf(net.to_timm_classifier("abc"), tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x).logits_abc)


def test_bacon_net_init_and_attributes():
    net = BaconNet("wrn28_2", num_classes=10, backbone_kwargs={"drop_rate": 0.1})
    assert (net.backbone_name, net.backbone_kwargs, net.num_classes, net.proj_dim) == (
        "wrn28_2",
        {"drop_rate": 0.1},
        10,
        16,
    )
    assert net.head_init == "default"
    assert net.num_features == 128 and net.backbone.num_classes == 0
    assert net.head_for("main") is net.head and net.head_for("abc") is net.head_abc
    assert torch.all(net.head.bias == 0)  # the main head is USB's WRN classifier: xavier, zero bias
    bound = 1 / 128**0.5  # PyTorch's default Linear init (the release's ABC head and projection)
    for linear in (net.head_abc, net.proj):
        assert not torch.all(linear.bias == 0) and linear.bias.abs().max() <= bound
        assert linear.weight.abs().max() <= bound
    family = BaconNet("wrn28_2", num_classes=10, head_init="family")
    assert family.head_init == "family"
    for linear in (
        family.head,
        family.head_abc,
        family.proj,
    ):  # xavier normal, zero bias (USB's WRN init)
        assert torch.all(linear.bias == 0)
    assert isinstance(net.proj, nn.Linear)  # no BN / activation / normalisation
    with pytest.raises(UserError, match="this net has main or abc"):
        net.head_for("aux")
    with pytest.raises(UserError, match="num_classes"):
        BaconNet("wrn28_2", 10, backbone_kwargs={"num_classes": 5})
    with pytest.raises(UserError, match="unknown head_init 'xavier'; choose default or family"):
        BaconNet("wrn28_2", 10, head_init="xavier")


def test_bacon_net_from_module():
    backbone = timm.create_model("wrn28_2", num_classes=10)
    net = BaconNet(backbone, num_classes=4).eval()
    assert net.backbone_name == "wrn28_2" and backbone.num_classes == 0
    x = batch()
    with torch.no_grad():
        assert torch.equal(net.to_timm_classifier("abc")(x), net(x).logits_abc)


def test_any_timm_model_with_kwargs():
    net = BaconNet("convnext_atto", num_classes=3, backbone_kwargs={"drop_path_rate": 0.1})
    assert net(batch()).logits_abc.shape == (2, 3)
    assert any(getattr(m, "drop_prob", 0) > 0 for m in net.backbone.modules())


def test_unknown_name_suggests():
    with pytest.raises(UserError) as e:
        create_backbone("wrn28-2")
    msg = str(e.value)
    assert "unknown backbone 'wrn28-2'; did you mean wrn28_2, wrn28_8" in msg
    assert "timm.list_models()" in msg and "\n" not in msg
    with pytest.raises(UserError, match="unknown pretrained tag 'nope'.*a1_in1k"):
        create_backbone("resnet18.nope")
    with pytest.raises(UserError, match="does not accept these --backbone-kwargs"):
        create_backbone("wrn28_2", widen=3)
    with pytest.raises(UserError, match="fixed 3x3 stem"):
        create_backbone("resnet18_cifar", stem_type="deep")


def test_pretrained_errors(monkeypatch):
    with pytest.raises(UserError, match="has no pretrained weights.*drop --pretrained"):
        BaconNet("wrn28_2", 10, pretrained=True)

    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    with pytest.raises(UserError) as e:
        create_backbone("resnet18_cifar", pretrained=True)
    msg = str(e.value)
    assert (
        "not in the local Hugging Face cache" in msg
        and "drop --pretrained" in msg
        and "\n" not in msg
    )


@pytest.mark.parametrize(
    "name, source",
    [("resnet18_cifar", "resnet18"), ("vit_tiny_patch4_32", "vit_tiny_patch16_224")],
)
def test_pretrained_loads_parent_weights(monkeypatch, name, source):
    """Offline stand-in for the Hub: the parent's (random) ImageNet-shaped weights go through timm's loader."""
    parent = timm.create_model(source).state_dict()
    requested = []

    def fake_hub(hub_id, *args, **kwargs):
        requested.append(hub_id)
        return {k: v.clone() for k, v in parent.items()}

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", fake_hub)
    m = create_backbone(name, pretrained=True, num_classes=10)
    assert requested == [timm.models.get_pretrained_cfg(name).hf_hub_id]
    assert requested[0].startswith(f"timm/{source}.")
    sd = m.state_dict()
    same = [k for k in sd if k in parent and sd[k].shape == parent[k].shape]
    assert len(same) > 10 and all(torch.equal(sd[k], parent[k]) for k in same)
    resized = {k for k in sd if k in parent and sd[k].shape != parent[k].shape}
    first = "conv1.weight" if "resnet" in name else "patch_embed.proj.weight"
    assert first in resized and resized <= {
        first,
        "pos_embed",
        "fc.weight",
        "fc.bias",
        "head.weight",
        "head.bias",
    }
    assert m(batch()).shape == (2, 10)


def test_plain_timm_spec_structure():
    assert plain_timm_spec("vit_tiny_patch4_32") == (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 4},
    )
    assert plain_timm_spec("vit_tiny_patch2_32.augreg_in21k_ft_in1k")[1]["patch_size"] == 2
    for name in ("wrn28_2", "wrn37_2", "resnet18_cifar", "resnet18", "nope"):
        assert plain_timm_spec(name) is None
    for name in ("vit_tiny_patch4_32", "vit_small_patch4_32", "vit_tiny_patch2_32"):
        parent, args = plain_timm_spec(name)
        ours = timm.create_model(name, num_classes=10, device="meta").state_dict()
        theirs = timm.create_model(parent, num_classes=10, device="meta", **args).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


_PLAIN_TIMM_CHILD = """
import sys
import safetensors.torch, timm, torch
assert "bacon_zoo" not in sys.modules
parent, args, weights, inputs, out = sys.argv[1], eval(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
model = timm.create_model(parent, num_classes=10, **args).eval()
model.load_state_dict(safetensors.torch.load_file(weights), strict=True)
with torch.no_grad():
    logits = model(safetensors.torch.load_file(inputs)["x"])
safetensors.torch.save_file({"logits": logits}, out)
assert "bacon_zoo" not in sys.modules
"""


@pytest.mark.slow  # a fresh interpreter (plain timm)
def test_plain_timm_spec_loads_in_plain_timm(tmp_path):
    """Our ViT's weights load strictly into timm's parent in a fresh interpreter without bacon_zoo."""
    import subprocess
    import sys

    import safetensors.torch

    ours = timm.create_model("vit_tiny_patch4_32", num_classes=10).eval()
    x = batch()
    safetensors.torch.save_file(ours.state_dict(), tmp_path / "w.safetensors")
    safetensors.torch.save_file({"x": x}, tmp_path / "x.safetensors")
    parent, args = plain_timm_spec("vit_tiny_patch4_32")
    script = tmp_path / "child.py"
    script.write_text(_PLAIN_TIMM_CHILD)
    files = [str(tmp_path / f) for f in ("w.safetensors", "x.safetensors", "out.safetensors")]
    subprocess.run(
        [sys.executable, str(script), parent, repr(args), *files],
        check=True,
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    with torch.no_grad():
        assert torch.equal(safetensors.torch.load_file(files[2])["logits"], ours(x))
