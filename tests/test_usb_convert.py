"""USB / BaCon-release checkpoints -> our WRNs and BaconNet: identical outputs, one-line errors.

The reference is a small USB-style WRN written here from the description in docs/method.md ("Training protocol of
the release") with USB's parameter names, deliberately structured differently from bacon_zoo's WRN.
"""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from bacon_zoo.errors import UserError
from bacon_zoo.models import BaconNet, UsbWeights, bacon_net_from_usb, convert_usb_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RefBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)  # eps 1e-5 inside the blocks
        self.relu1 = nn.LeakyReLU(0.1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.relu2 = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.same = cin == cout
        self.convShortcut = None if self.same else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.abr = activate_before_residual

    def forward(self, x):
        act = self.relu1(self.bn1(x))  # always computed, as in the release
        if self.same:
            return x + self.conv2(self.relu2(self.bn2(self.conv1(act))))
        inp = act if self.abr else x  # stage 1: activated; stages 2+: raw x, act unused
        return self.convShortcut(inp) + self.conv2(self.relu2(self.bn2(self.conv1(inp))))


class RefStage(nn.Module):
    def __init__(self, n, cin, cout, stride, abr):
        super().__init__()
        blocks = [
            RefBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, abr) for i in range(n)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    def __init__(self, num_classes=10, widen=2, stages=3, first_stride=1, n=4):
        super().__init__()
        widths = [16 * widen * 2**i for i in range(stages)]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=True)
        cin = 16
        for i, w in enumerate(widths):
            stage = RefStage(n, cin, w, first_stride if i == 0 else 2, abr=i == 0)
            setattr(self, f"block{i + 1}", stage)
            cin = w
        self.stages = stages
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001, eps=0.001)
        self.relu = nn.LeakyReLU(0.1)
        self.classifier = nn.Linear(cin, num_classes)

    def feat(self, x):
        x = self.conv1(x)
        for i in range(self.stages):
            x = getattr(self, f"block{i + 1}")(x)
        return F.adaptive_avg_pool2d(self.relu(self.bn1(x)), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.feat(x))


class RefRelease(nn.Module):
    """The release's wrapper: WRN backbone + ABC head + projection."""

    def __init__(self, num_classes=10, proj_dim=16, **wrn):
        super().__init__()
        self.backbone = RefWRN(num_classes, **wrn)
        dim = self.backbone.classifier.in_features
        self.aux_classifier = nn.Linear(dim, num_classes)
        self.projection = nn.Linear(dim, proj_dim)

    def forward(self, x):
        f = self.backbone.feat(x)
        return f, self.backbone.classifier(f), self.aux_classifier(f), self.projection(f)


def randomize(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics, so that every tensor matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.ndim > 1 else 0.5))
    return model


def x_batch(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "arch, wrn", [("wrn28_2", {}), ("wrn37_2", {"stages": 4, "first_stride": 2})]
)
def test_plain_usb_wrn(arch, wrn):
    ref = randomize(RefWRN(10, **wrn)).eval()
    w = convert_usb_state_dict(ref.state_dict(), arch, 10)
    assert isinstance(w, UsbWeights) and w.abc_head is None and w.projection is None
    model = timm.create_model(arch, num_classes=0).eval()
    model.load_state_dict(w.backbone, strict=True)
    head = nn.Linear(model.num_features, 10)
    head.load_state_dict(w.classifier, strict=True)
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.feat(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(head(model(x)), ref(x), rtol=0, atol=1e-6)


def test_train_mode_matches_usb():
    """Train-mode outputs and the BN statistics they leave behind match (the unused bn1 included)."""
    ref = randomize(RefWRN(10)).train()
    model = timm.create_model("wrn28_2", num_classes=0).train()
    model.load_state_dict(convert_usb_state_dict(ref.state_dict(), "wrn28_2", 10).backbone)
    x = x_batch(4)
    torch.testing.assert_close(model(x), ref.feat(x), rtol=0, atol=1e-6)
    after = convert_usb_state_dict(ref.state_dict(), "wrn28_2", 10).backbone
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=1e-6, msg=k)


def test_release_wrapper_with_module_prefix():
    ref = randomize(RefRelease(10, proj_dim=16)).eval()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    w = convert_usb_state_dict(state, "wrn28_2", 10)
    assert w.abc_head is not None and w.projection["weight"].shape == (16, 128)
    net = bacon_net_from_usb(w, "wrn28_2", 10).eval()
    assert isinstance(net, BaconNet) and net.proj_dim == 16
    x = x_batch()
    with torch.no_grad():
        ours, theirs = net(x), ref(x)
    for a, b in zip(ours, theirs):  # feat, main logits, ABC logits, projection
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_old_fc_name_and_no_classifier():
    ref = randomize(RefWRN(10)).state_dict()
    fc = {k.replace("classifier.", "fc."): v for k, v in ref.items()}
    assert torch.equal(
        convert_usb_state_dict(fc, "wrn28_2", 10).classifier["weight"], ref["classifier.weight"]
    )
    bare = {k: v for k, v in ref.items() if not k.startswith("classifier.")}
    assert convert_usb_state_dict(bare, "wrn28_2", 10).classifier is None


def test_errors_name_the_first_offending_key():
    ref = randomize(RefWRN(10)).state_dict()
    cases = [
        (
            {**ref, "block2.layer.0.conv1.weight": torch.zeros(64, 32, 1, 1)},
            r"shape mismatch for 'block2.layer.0.conv1.weight': checkpoint \(64, 32, 1, 1\), wrn28_2 has \(64, 32, 3, 3\)",
        ),
        (
            {**ref, "block1.layer.0.conv1.bias": torch.zeros(32)},
            "unknown key 'block1.layer.0.conv1.bias'",
        ),
        ({k: v for k, v in ref.items() if k != "bn1.running_var"}, "missing key 'bn1.running_var'"),
        ({**ref, "classifier.bias": torch.zeros(7)}, r"shape mismatch for 'classifier.bias'"),
        ({"model": ref, "epoch": 3}, "pass a state dict such as checkpoint"),
    ]
    wrapped = {f"backbone.{k}": v for k, v in ref.items()}
    cases.append(({**wrapped, "ema.weight": torch.zeros(1)}, "unknown key 'ema.weight'"))
    cases.append(
        (
            {**wrapped, "module.aux_classifier.weight": torch.zeros(10, 128)},
            "missing key 'aux_classifier.bias'",
        )
    )
    for state, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            convert_usb_state_dict(state, "wrn28_2", 10)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown backbone"):
        convert_usb_state_dict(ref, "wrn28-2", 10)
