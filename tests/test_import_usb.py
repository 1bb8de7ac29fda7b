"""`bacon-zoo import-usb` end to end, in-process through `bacon_zoo.cli.main`.

The checkpoints are USB-format `torch.save` dicts built here from the reference WRN that
tests/test_usb_convert.py writes from the spec (USB's parameter names, its own structure); the key
mapping itself is tested there. Here: the command, the folder it writes, the logits plain timm gives
from it, and one clear line for each bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import metadata_load
from test_usb_convert import RefRelease, RefWRN, randomize

from bacon_zoo.cli import main
from bacon_zoo.hub.names import sha256_file
from bacon_zoo.run.weights import load_bacon_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _save_usb(path: Path, ema: torch.nn.Module, model: torch.nn.Module, prefix: str = "") -> Path:
    """What USB's `save_model` writes: model, ema_model, optimizer, scheduler, it, ..."""
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    torch.save(
        {
            "model": {prefix + k: v for k, v in model.state_dict().items()},
            "ema_model": {prefix + k: v for k, v in ema.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": {"last_epoch": 1234},
            "it": 1234,
            "best_it": 1000,
            "best_eval_acc": 0.5,
        },
        path,
    )
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_release_wrapper_gives_the_abc_logits_in_plain_timm(tmp_path, capsys):
    ema = randomize(RefRelease(10, proj_dim=16)).eval()
    model = RefRelease(10, proj_dim=16).eval()  # different weights under "model"
    ckpt = _save_usb(tmp_path / "model_best.pth", ema, model, prefix="module.")
    out = tmp_path / "imported"
    rc, err = _run(
        ["import-usb", str(ckpt), "--arch", "wrn28_2", "--num-classes", "10", "--out", str(out)],
        capsys,
    )
    assert rc == 0, err
    for f in ("model.safetensors", "config.json", "bacon_net.safetensors", "bacon_net.json",
              "README.md", "export_manifest.json"):  # fmt: skip
        assert (out / f).is_file(), f
    x = _x()
    with torch.no_grad():
        feat, logits, logits_abc, proj = ema(x)
        clf = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(clf(x), logits_abc, rtol=0, atol=1e-5)
        net = load_bacon_net(out)
        for a, b in zip(net(x), (feat, logits, logits_abc, proj)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    card = (out / "README.md").read_text()
    assert "Imported with `bacon-zoo import-usb`" in card and sha256_file(ckpt) in card
    assert "`ema_model`" in card and "iteration 1234" in card and "no accuracy claim" in card
    assert "model-index" not in metadata_load(out / "README.md")  # no eval claims
    info = json.loads((out / "bacon_net.json").read_text())
    assert info["imported"]["key"] == "ema_model" and info["eval_head"] == "abc"

    # --key model: the non-EMA weights, into another folder
    out2 = tmp_path / "raw"
    argv = ["import-usb", str(ckpt), "--arch", "wrn28_2", "--num-classes", "10", "--out", str(out2)]
    assert _run(argv + ["--key", "model"], capsys)[0] == 0
    with torch.no_grad():
        got = timm.create_model(f"local-dir:{out2}", pretrained=True).eval()(x)
        torch.testing.assert_close(got, model(x)[2], rtol=0, atol=1e-5)

    # the same import again: the untouched folder is replaced silently; a hand edit is protected
    assert _run(argv + ["--key", "model"], capsys)[0] == 0
    (out2 / "README.md").write_text("my notes\n")
    rc, err = _run(argv + ["--key", "model"], capsys)
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out2 / "README.md").read_text() == "my notes\n"


def test_plain_wrn_gives_its_classifier_and_no_untrained_heads(tmp_path, capsys):
    ema = randomize(RefWRN(10)).eval()
    ckpt = _save_usb(tmp_path / "wrn.pth", ema, RefWRN(10))
    out = tmp_path / "plain"
    argv = ["import-usb", str(ckpt), "--arch", "wrn28_2", "--num-classes", "10", "--out", str(out)]
    rc, err = _run(argv + ["--class-names", ",".join(f"c{i}" for i in range(10))], capsys)
    assert rc == 0, err
    assert not (out / "bacon_net.safetensors").exists()  # the heads were never trained
    x = _x()
    with torch.no_grad():
        clf = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(clf(x), ema(x), rtol=0, atol=1e-5)
    assert clf.pretrained_cfg["label_names"][3] == "c3"
    assert "import bacon_zoo" in (out / "README.md").read_text()  # a WRN needs the registration


class _NotAllowed:  # weights_only=True refuses custom classes
    pass


def test_bad_checkpoints_are_one_line(tmp_path, capsys):
    good = randomize(RefWRN(10)).state_dict()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"ema_model": good, "extra": _NotAllowed()}, unsafe)
    no_key = tmp_path / "no_key.pth"
    torch.save({"model": good, "it": 3}, no_key)
    unknown = tmp_path / "unknown.pth"
    torch.save({"ema_model": {**good, "head.fc.weight": torch.zeros(2, 2)}}, unknown)
    ok = tmp_path / "ok.pth"
    torch.save({"ema_model": good}, ok)
    cases = [
        (garbage, [], "not a readable torch.save checkpoint"),
        (unsafe, [], "refused: the file asks to run code"),
        (no_key, [], "has no 'ema_model' entry"),
        (unknown, [], "unknown key 'head.fc.weight'"),
        (ok, ["--num-classes", "7"], "shape mismatch for 'classifier"),
        (tmp_path / "missing.pth", [], "is not a file"),
        (ok, ["--arch", "wrn28_8"], "shape mismatch"),
    ]
    for path, extra, needle in cases:
        out = tmp_path / f"out_{path.stem}"
        args = {"--arch": "wrn28_2", "--num-classes": "10"}
        for k, v in zip(extra[::2], extra[1::2]):
            args[k] = v
        argv = ["import-usb", str(path), "--out", str(out)]
        argv += [item for kv in args.items() for item in kv]
        rc, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (needle, err)
        assert "Traceback" not in err and not out.exists()
