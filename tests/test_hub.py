"""Export, model card, push/pull through a fake Hub, load_pretrained, --init-from and the zoo.

The run directory is built by hand (a tiny 3-class WRN-28-2, no training). The fake-Hub round trip
runs in a subprocess with HF_ENDPOINT set, because huggingface_hub reads it at import; the offline case
patches the two constants huggingface_hub reads at call time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard, metadata_load

import bacon_zoo.models  # noqa: F401  (registers wrn28_2 in timm)
from bacon_zoo.cli import build_parser
from bacon_zoo.config import TrainConfig
from bacon_zoo.errors import UserError
from bacon_zoo.hub import cli as hub_cli
from bacon_zoo.hub import zoo
from bacon_zoo.hub.card import METRICS, contrastive_summary, never_engaged_note
from bacon_zoo.hub.export import export_changes, export_run
from bacon_zoo.hub.hubio import load_pretrained, predict, push, retry_command
from bacon_zoo.hub.names import model_name, setting_string, setting_tag
from bacon_zoo.metrics import summarize
from bacon_zoo.models import BaconNet
from bacon_zoo.run import RunDir
from bacon_zoo.run.checkpoint import CUSTOM_OBJECTS, write_manifest
from bacon_zoo.run.weights import load_bacon_net, load_bacon_net_weights

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "frog"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
STEP = 20
SIZE = 16  # small inputs keep the CPU forwards cheap (WRN pools globally)
NAME = "wrn28_2.bacon_c10lt_n20m40g10_s3"  # the default name of the run below


def card_metrics(card_path: Path) -> dict[tuple[str, str], float]:
    """{(metric_config, summary key): value} of a card's model-index, read back by the Hub's parser."""
    by_type = {mtype: key for key, (mtype, _) in METRICS.items()}
    return {
        (r.metric_config, by_type[r.metric_type]): r.metric_value
        for r in ModelCard.load(card_path).data.eval_results or []
        if r.metric_type in by_type
    }


def _tree_digest(folder: Path, skip: str | None = None) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (skip and p.relative_to(folder).parts[0] == skip)
    }


def _write_checkpoint(ckpt: Path, net: torch.nn.Module) -> None:
    """A complete checkpoint folder: every registered object (the EMA one real) and the manifest."""
    ckpt.mkdir(parents=True)
    for i, obj in enumerate(CUSTOM_OBJECTS):
        state = {"module." + k: v for k, v in net.state_dict().items()} if obj == "ema" else {}
        torch.save(state, ckpt / f"custom_checkpoint_{i}.pkl")
    write_manifest(ckpt)


def _make_run(
    run: Path, algorithm: str = "bacon", backbone: str = "wrn28_2", size: int = SIZE
) -> BaconNet:
    """A run directory as the trainer leaves it, with a random (but BN-calibrated) EMA BaconNet."""
    torch.manual_seed(0)
    net = BaconNet(backbone, num_classes=3, proj_dim=16)
    with torch.no_grad():  # distinct heads and non-trivial BN statistics
        net.train()(torch.randn(8, 3, size, size))
        net.head_abc.weight.normal_(0, 0.5)
    net.eval()
    cfg = TrainConfig(
        algorithm=algorithm, backbone=backbone, dataset="cifar10", n1=20, m1=40, imb_ratio_l=10,
        imb_ratio_u=10, steps=STEP, batch_size=4, mu=2, eval_every=10, seed=3, image_size=size,
    )  # fmt: skip
    run.mkdir(parents=True)
    RunDir(run).write_config(cfg)
    data = {
        "dataset": "cifar10", "num_classes": 3, "class_names": CLASSES, "mean": MEAN, "std": STD,
        "image_size": size, "labeled_counts": [20, 6, 2], "unlabeled_counts": [40, 12, 4],
        "num_test": 30,
    }  # fmt: skip
    (run / "data.json").write_text(json.dumps(data))
    (run / "split.json").write_text(json.dumps({"labeled": [[0, 1]], "unlabeled": [[2, 3]]}))
    rows = [
        {"step": 10, "top1": 50.0, "balanced_acc": 40.0, "gmean": 30.0, "head": 90.0,
         "medium": 20.0, "tail": 10.0, "per_class": [90.0, 20.0, 10.0], "num_samples": 30},
        {"step": 20, "top1": 43.33, "balanced_acc": 43.33, "gmean": 38.1, "head": 70.0,
         "medium": 40.0, "tail": 20.0, "per_class": [70.0, 40.0, 20.0], "num_samples": 30},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows) | {
        "status": "complete", "steps": STEP, "algorithm": algorithm, "backbone": backbone,
        "dataset": "cifar10", "seed": 3, "params": sum(p.numel() for p in net.parameters()),
        "images_per_s": 123.4, "num_processes": 1, "mixed_precision": "bf16", "precision": "fp32",
        "labeled_counts": data["labeled_counts"], "eval_head": "main" if algorithm == "fixmatch" else "abc",
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_checkpoint(run / "checkpoints" / f"step_{STEP:07d}", net)
    (run / "analysis").mkdir()
    (run / "analysis" / "analysis.md").write_text("# analysis\n")
    (run / "analysis" / "tsne.png").write_bytes(b"\x89PNG fake")
    return net


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tmp_path_factory.mktemp("hub") / "run"
    net = _make_run(run)
    before = _tree_digest(run)
    out = export_run(run)
    assert _tree_digest(run, skip="export") == before  # the run's own files are untouched
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    return {"run": run, "out": out, "net": net, "x": x, "ref": ref}


# ---------------------------------------------------------------------------------------------
# export


def test_export_is_a_timm_repo_giving_the_ema_eval_head(exported):
    out, x, ref = exported["out"], exported["x"], exported["ref"]
    for f in ("model.safetensors", "config.json", "bacon_net.safetensors", "bacon_net.json",
              "recipe.yaml", "split.json", "data.json", "metrics.jsonl", "summary.json",
              "README.md", "per_class_accuracy.png", "analysis/analysis.md", "analysis/tsne.png"):  # fmt: skip
        assert (out / f).is_file(), f
    assert (out / "recipe.yaml").read_text() == (exported["run"] / "config.yaml").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "wrn28_2" and cfg["num_classes"] == 3
    assert cfg["label_names"] == CLASSES and cfg["num_features"] == 128
    assert (
        cfg["pretrained_cfg"]["input_size"] == [3, SIZE, SIZE]
        and cfg["pretrained_cfg"]["mean"] == MEAN
    )

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, ref.logits_abc, rtol=0, atol=0)
    assert not torch.allclose(logits, ref.logits, atol=1e-3)  # it is the ABC head, not the main one

    loaded, data_cfg = load_pretrained(str(out))
    assert not loaded.training and data_cfg["input_size"] == (3, SIZE, SIZE)
    assert list(data_cfg["mean"]) == MEAN and list(data_cfg["std"]) == STD
    assert list(loaded.pretrained_cfg["label_names"]) == CLASSES
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref.logits_abc, rtol=0, atol=0)


def test_names_encode_the_setting():
    cfg = TrainConfig(algorithm="bacon", n1=1500, m1=3000, imb_ratio_l=100, imb_ratio_u=100)
    assert model_name(cfg.to_dict()) == "wrn28_2.bacon_c10lt_n1500m3000g100_s0"
    names = {
        model_name(TrainConfig(**kw).to_dict())
        for kw in (
            {}, {"seed": 1}, {"n1": 500}, {"m1": None}, {"imb_ratio_u": 1.0}, {"reverse_u": True},
            {"imb_ratio_l": 10, "imb_ratio_u": 10}, {"algorithm": "abc"}, {"dataset": "cifar100"},
            {"include_labeled_in_unlabeled": True}, {"backbone": "hf-hub:timm/resnet18.a1_in1k"},
        )
    }  # fmt: skip
    assert len(names) == 11  # every setting its own name
    assert setting_tag("stl10", 450, None, 10, 10) == "stl10lt_n450mallg10"
    assert setting_tag("cifar10", 1500, 3000, 100, 1) == "c10lt_n1500m3000g100u1"
    assert setting_tag("cifar10", 1500, 3000, 100, 100, reverse_u=True) == "c10lt_n1500m3000g100r"
    assert setting_tag("uoft-cs/cifar100", 150, 300, 10, 0.5) == "c100lt_n150m300g10u0p5"
    assert setting_tag("/data/My Set/", 10, 20, 2, 2) == "my_setlt_n10m20g2"
    hf = model_name(TrainConfig(backbone="hf-hub:timm/resnet18.a1_in1k", algorithm="abc").to_dict())
    assert hf == "resnet18.abc_c10lt_n1000m4000g100_s0"


def test_init_from_round_trip_and_mismatch(exported):
    out, x, ref = exported["out"], exported["x"], exported["ref"]
    model = BaconNet("wrn28_2", num_classes=3, proj_dim=16)
    load_bacon_net_weights(model, f"local-dir:{out}")
    with torch.no_grad():
        got = model.eval()(x)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(load_bacon_net(out)(x).proj, ref.proj, rtol=0, atol=0)

    with pytest.raises(UserError, match="don't fit") as e:
        load_bacon_net_weights(BaconNet("wrn28_2", num_classes=4), str(out))
    assert "\n" not in str(e.value) and "num_classes=3" in str(e.value)


def test_init_from_a_hub_name_is_fetched_above_the_run_layer(exported, monkeypatch):
    """run.weights reads local folders only; hub.weights turns a Hub name into a folder (here a
    stand-in for the download) before training starts, and its loaders take any name."""
    from bacon_zoo.hub import weights as hub_weights

    out = exported["out"]
    with pytest.raises(UserError, match="is not a local export folder") as e:
        load_bacon_net_weights(BaconNet("wrn28_2", num_classes=3, proj_dim=16), "hf-hub:me/model")
    assert "\n" not in str(e.value)
    fetched = []
    monkeypatch.setattr(hub_weights, "pull", lambda repo, **kw: fetched.append(repo) or out)
    assert hub_weights.resolve_init_from("hf-hub:me/model@v1") == out
    assert hub_weights.resolve_init_from(f"local-dir:{out}") == out and fetched == ["me/model@v1"]
    assert hub_weights.resolve_init_from(None) is None
    model = BaconNet("wrn28_2", num_classes=3, proj_dim=16)
    hub_weights.load_bacon_net_weights(model, "hf-hub:me/model")
    torch.testing.assert_close(model.state_dict(), load_bacon_net(out).state_dict(), rtol=0, atol=0)


def test_corrupt_safetensors_are_refused(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported["out"], copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # truncated download / disk full
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        load_pretrained(f"local-dir:{copy}")
    assert "\n" not in str(e.value)
    net_w = copy / "bacon_net.safetensors"
    data = bytearray(net_w.read_bytes())
    data[-10:] = b"\x00" * 10  # same size, flipped bytes: caught by the recorded checksum
    net_w.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        load_bacon_net_weights(BaconNet("wrn28_2", num_classes=3), copy)


def test_failed_export_keeps_the_previous_one(exported, monkeypatch, tmp_path):
    run, out = exported["run"], exported["out"]
    before = _tree_digest(out)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("bacon_zoo.hub.card.build_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run)
    assert _tree_digest(out) == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(UserError, match="replace the run directory"):
        export_run(run, out_dir=run)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a bacon-zoo export"):
        export_run(run, out_dir=tmp_path / "other")


# ---------------------------------------------------------------------------------------------
# card


def test_card_parses_back_with_the_run_numbers(exported):
    out = exported["out"]
    summary = json.loads((exported["run"] / "summary.json").read_text())
    meta = metadata_load(out / "README.md")
    assert meta["library_name"] == "timm" and meta["license"] == "apache-2.0"
    assert {"image-classification", "timm", "bacon-zoo", "semi-supervised-learning",
            "class-imbalance", "bacon"} <= set(meta["tags"])  # fmt: skip
    assert meta["datasets"] == ["uoft-cs/cifar10"] and "base_model" not in meta
    card = ModelCard.load(out / "README.md")
    results = card.data.eval_results
    recipe = {"n1": 20, "m1": 40, "imb_ratio_l": 10.0, "imb_ratio_u": 10.0}
    # the Hub's fields: a data set id, a split name, its config (none for CIFAR-10), no revision
    # pinned; the long-tailed setting is the card's own metadata
    assert {(r.dataset_type, r.dataset_split, r.dataset_config, r.dataset_revision)
            for r in results} == {("uoft-cs/cifar10", "test", None, None)}  # fmt: skip
    setting = "N1=20,M1=40,gamma_l=10,gamma_u=10"
    assert meta["long_tail_setting"] == setting_string(recipe) == setting
    assert {r.task_type for r in results} == {"image-classification"}
    got = card_metrics(out / "README.md")
    assert got == {(w, k): summary[w][k] for w in ("best", "last") for k in METRICS}
    assert got[("best", "top1")] == summary["best_top1"] == 50.0
    text = (out / "README.md").read_text()
    for needle in ("arXiv", "2403.12986", "Feng, Qianhan", "official_quirks", "analysis/analysis.md",
                   "per_class_accuracy.png", "| frog | 2 | 4 |", "20 steps x 4 labeled + 8 unlabeled",
                   f"hf-hub:<org>/{NAME}", "`steps`: 20 (release: 300000)",
                   "Training protocol: `release-v2`", "trained in precision `fp32`",
                   "import bacon_zoo", "is a bacon-zoo architecture",
                   # timm's own validate.py, with bacon_zoo imported first, on the test split
                   "runpy.run_path('validate.py', run_name='__main__')",
                   "--dataset hfds/uoft-cs/cifar10 --split test --input-key img --target-key label"):  # fmt: skip
        assert needle in text, needle


REVISION = "0b2714987fa478483af9968de7c934580d0bb9a2"


def test_card_of_local_data_has_no_path_and_records_the_revision(exported, tmp_path):
    from bacon_zoo.hub.card import build_card

    local, pinned = tmp_path / "local", tmp_path / "pinned"
    for folder, dataset, revision in ((local, str(tmp_path / "data" / "my_set"), None),
                                      (pinned, "cifar10", REVISION)):  # fmt: skip
        shutil.copytree(exported["out"], folder)
        recipe = (folder / "recipe.yaml").read_text()
        assert "dataset: cifar10\n" in recipe and "dataset_revision: null\n" in recipe
        recipe = recipe.replace("dataset: cifar10\n", f"dataset: {dataset}\n")
        recipe = recipe.replace("dataset_revision: null", f"dataset_revision: {revision or 'null'}")
        (folder / "recipe.yaml").write_text(recipe)
        build_card(folder).save(folder / "README.md")
    text = (local / "README.md").read_text()
    assert str(tmp_path) not in text and "`my_set`" in text
    assert "--data-dir PATH/TO/IMAGES --split test" in text  # no Hub copy for timm's reader
    (r, *_) = ModelCard.load(local / "README.md").data.eval_results
    assert (r.dataset_type, r.dataset_split, r.dataset_revision) == ("my_set", "test", None)
    card = ModelCard.load(pinned / "README.md")
    assert {r.dataset_revision for r in card.data.eval_results} == {REVISION}
    assert f"revision `{REVISION}`" in card.text


# ---------------------------------------------------------------------------------------------
# predict, CLI, zoo


def test_predict_top_k(exported, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    top = predict(str(exported["out"]), paths, topk=2)
    assert len(top) == 2 and all(len(t) == 2 for t in top)
    assert all(label in CLASSES for t in top for label, _ in t)
    assert all(t[0][1] >= t[1][1] for t in top)
    with pytest.raises(UserError, match="not found"):
        predict(str(exported["out"]), [tmp_path / "missing.png"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bacon-zoo")
    hub_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_commands_parse():
    p = _parser()
    assert p.parse_args(["export", "runs/x", "--out", "e"]).func is hub_cli.run_export
    assert p.parse_args(["push", "e", "--repo-id", "me/m", "--private"]).private
    assert p.parse_args(["pull", "me/m", "--revision", "v1"]).revision == "v1"
    assert p.parse_args(["predict", "e", "a.png", "b.png", "--topk", "2"]).images == [
        "a.png",
        "b.png",
    ]
    assert p.parse_args(["zoo"]).func is hub_cli.run_zoo_list
    assert p.parse_args(["zoo", "add", "e", "--hub-id", "me/m"]).func is hub_cli.run_zoo_add


def test_zoo_add_table_and_conflicts(exported, tmp_path, monkeypatch, capsys):
    index = tmp_path / "model_cards" / "index.json"
    monkeypatch.setenv(zoo.INDEX_ENV, str(index))
    args = _parser().parse_args(["zoo"])
    args.func(args)
    assert "empty" in capsys.readouterr().out
    summary = json.loads((exported["out"] / "summary.json").read_text())
    entry = zoo.add(exported["out"])
    assert entry["name"] == NAME and entry["status"] == "trained here"
    assert entry["protocol"] == "release-v2" and entry["precision"] == "fp32"
    assert (entry["top1"], entry["balanced"], entry["tail"]) == (
        summary["best_top1"], summary["best"]["balanced_acc"], summary["best"]["tail"],
    )  # fmt: skip
    card = tmp_path / entry["card"]
    assert card.is_file() and f"({NAME}/per_class_accuracy.png)" in card.read_text()
    assert (card.parent / entry["name"] / "per_class_accuracy.png").is_file()
    entry = zoo.add(exported["out"], hub_id=f"me/{NAME}", pushed=True)
    assert len(zoo.load_index()["models"]) == 1 and entry["status"] == "pushed"
    assert f"hf-hub:me/{NAME}" in card.read_text()
    args.func(args)
    table = capsys.readouterr().out
    assert NAME in table and "50.00" in table and "pushed" in table
    other = json.loads(json.dumps(zoo.load_index()))
    other["models"][0]["seed"] = 99
    zoo.save_index(other)
    with pytest.raises(UserError, match="--tag"):
        zoo.add(exported["out"])
    assert zoo.add(exported["out"], tag="bacon_mine_s3")["name"] == "wrn28_2.bacon_mine_s3"


# ---------------------------------------------------------------------------------------------
# the Hub, through tests/hub_server.py (subprocesses: HF_* variables are read at import)


def _hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # fmt: skip
    return env | extra


def _run_py(code: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.slow  # a fresh interpreter against a local fake Hub
def test_push_pull_load_and_zoo_tag_through_a_fake_hub(exported, tmp_path):
    from hub_server import HubServer

    out = exported["out"]
    np.save(tmp_path / "x.npy", exported["x"].numpy())
    np.save(tmp_path / "ref.npy", exported["ref"].logits_abc.numpy())
    before = _tree_digest(out)
    code = f"""
    import json, numpy as np, timm, torch
    from pathlib import Path
    from huggingface_hub import ModelCard
    import bacon_zoo.models
    from bacon_zoo.errors import UserError
    from bacon_zoo.hub import zoo
    from bacon_zoo.hub.hubio import load_pretrained, pull, push
    out, tmp = Path({str(out)!r}), Path({str(tmp_path)!r})
    x, ref = torch.from_numpy(np.load(tmp / "x.npy")), torch.from_numpy(np.load(tmp / "ref.npy"))
    res = {{}}
    res["url"] = push(out, "org/wrn28_2.bacon_test")
    got = pull("org/wrn28_2.bacon_test")
    res["same_weights"] = (got / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    res["files"] = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
    res["card_repo"] = "hf-hub:org/wrn28_2.bacon_test" in (got / "README.md").read_text()
    res["card_results"] = [[r.metric_config, r.metric_type, r.metric_value]
                           for r in ModelCard.load(got / "README.md").data.eval_results]
    model, cfg = load_pretrained("hf-hub:org/wrn28_2.bacon_test")
    with torch.no_grad():
        res["hub_logits"] = (model(x) - ref).abs().max().item()
    # a zoo name resolves on demand through the index, timm's registry is never touched
    zoo.add(out, hub_id="org/wrn28_2.bacon_test", pushed=True)
    res["not_registered"] = not timm.models.is_model_pretrained("wrn28_2")
    loaded, _ = load_pretrained("wrn28_2.bacon_test")
    with torch.no_grad():
        res["tag_loader_logits"] = (loaded(x) - ref).abs().max().item()
    # the same in plain timm: the architecture with the entry's pretrained_cfg_overlay
    tagged = timm.create_model("wrn28_2", pretrained=True, num_classes=3,
                               pretrained_cfg_overlay=zoo.pretrained_cfg_overlay("wrn28_2.bacon_test")).eval()
    with torch.no_grad():
        res["tag_logits"] = (tagged(x) - ref).abs().max().item()
    res["tag_labels"] = list(tagged.pretrained_cfg["label_names"])
    try:
        push(out, "org/readonly-model")
    except UserError as e:
        res["refused"] = str(e)
    print("RESULT", json.dumps(res))
    """
    with HubServer() as hub:
        env = _hub_env(tmp_path, HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_fake",
                       BACON_ZOO_INDEX=str(tmp_path / "cards" / "index.json"))  # fmt: skip
        proc = _run_py(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert hub.unknown == [], hub.unknown
    assert hub.state.validated >= 1  # the card's metadata went through the Hub's YAML check
    assert (
        res["url"].endswith("org/wrn28_2.bacon_test") and res["same_weights"] and res["card_repo"]
    )
    assert set(res["files"]) == set(_tree_digest(out))
    summary = json.loads((out / "summary.json").read_text())
    by_type = {mtype: key for key, (mtype, _) in METRICS.items()}
    assert res["card_results"] and all(
        summary[w][by_type[t]] == v for w, t, v in res["card_results"]
    )
    assert max(res["hub_logits"], res["tag_logits"], res["tag_loader_logits"]) == 0.0
    assert res["not_registered"]
    assert res["tag_labels"] == CLASSES
    assert (
        "\n" not in res["refused"]
        and "HTTP 403" in res["refused"]
        and "unchanged" in res["refused"]
    )
    retry = res["refused"].split("retry: ", 1)[1]  # the suggested command parses with the real CLI
    argv = shlex.split(retry)
    assert argv[0] == "bacon-zoo"
    parsed = build_parser().parse_args(argv[1:])
    assert parsed.func is hub_cli.run_push and parsed.repo_id == "org/readonly-model"
    assert Path(parsed.export_dir) == out
    assert _tree_digest(out) == before  # neither push touched the local export


def test_pull_of_a_missing_repo_offline_is_one_fast_line(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1: huggingface_hub reads `constants.HF_HUB_OFFLINE` / `HF_HUB_CACHE` at call
    time, so patching them is what the variable does at import (the fake-hub test covers the env)."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    args = _parser().parse_args(["pull", "nobody/missing-model"])
    t = time.perf_counter()
    with pytest.raises(UserError) as e:
        args.func(args)
    assert time.perf_counter() - t < 5.0
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "nobody/missing-model" in msg
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        load_pretrained("hf-hub:nobody/missing-model")


def test_export_of_an_unfinished_run_rebuilds_its_summary(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run, ignore=shutil.ignore_patterns("export", "summary.json"))
    out = export_run(run, out_dir=tmp_path / "out", name="wrn28_2.partial")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["best_top1"] == 50.0
    assert "not complete" in (out / "README.md").read_text()
    assert json.loads((out / "bacon_net.json").read_text())["name"] == "wrn28_2.partial"
    assert not (run / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# push: token first, a retry command that parses


def test_push_without_a_token_fails_before_any_network_call(exported, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)

    def no_network(*a, **k):
        raise AssertionError("network call before the token check")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    with pytest.raises(UserError, match="no Hugging Face token") as e:
        push(exported["out"], "me/model", private=True, revision="v1")
    msg = str(e.value)
    assert "\n" not in msg and "HF_TOKEN" in msg
    args = build_parser().parse_args(shlex.split(msg.split("retry: ", 1)[1])[1:])
    assert (args.repo_id, args.private, args.revision) == ("me/model", True, "v1")


def test_retry_command_parses_with_odd_paths():
    cmd = retry_command("my runs/it's here/export", "org/m", private=True, revision="dev")
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert args.export_dir == "my runs/it's here/export" and args.revision == "dev" and args.private


# ---------------------------------------------------------------------------------------------
# re-export: never delete what the export did not write


def test_reexport_replaces_only_an_untouched_export(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run)  # with its export
    out = run / "export"
    assert export_changes(out) == []
    assert bacon_main(["export", str(run)]) == 0  # untouched: replaced silently
    assert export_changes(out) == [] and not list(run.glob("export.old-*"))

    (out / "notes.txt").write_text("mine")
    card = (out / "README.md").read_text()
    (out / "README.md").write_text(card + "\nhand edit\n")
    before = _tree_digest(run)
    with pytest.raises(UserError, match="--force") as e:
        export_run(run)
    assert "\n" not in str(e.value) and "notes.txt added" in str(e.value)
    assert "README.md changed" in str(e.value)
    assert _tree_digest(run) == before  # nothing replaced, nothing deleted

    export_run(run, force=True)  # the old one moved aside, intact
    old = run / "export.old-1"
    assert (old / "notes.txt").read_text() == "mine" and "hand edit" in (
        old / "README.md"
    ).read_text()
    assert export_changes(out) == [] and not (out / "notes.txt").exists()
    (out / "extra.txt").write_text("x")
    export_run(run, force=True)
    assert (run / "export.old-2" / "extra.txt").is_file() and (old / "notes.txt").is_file()


def bacon_main(argv: list[str]) -> int:
    from bacon_zoo.cli import main

    return main(argv)


# ---------------------------------------------------------------------------------------------
# honest BaCon cards


def test_contrastive_summary_counts_and_never_engaged():
    recipe = {"algorithm": "bacon", "steps": 300, "bacon": {"start": 0.5}}
    diag = {
        "con_steps": 40,
        "con_anchors": 10.0,
        "con_centers": 8.0,
        "center_valid": [True] * 9 + [False],
    }
    rows = [{"step": 200, "diagnostics": diag},
            {"step": 300, "diagnostics": diag | {"con_steps": 60, "con_anchors": 20.0, "con_centers": 10.0}}]  # fmt: skip
    c = contrastive_summary(recipe, rows)
    assert c["scheduled_steps"] == 149 and c["engaged_steps"] == 100 and c["engaged"]
    assert c["anchors"] == pytest.approx(16.0) and c["centers"] == pytest.approx(9.2)
    assert c["valid_centers_last"] == 9 and never_engaged_note(c) is None
    zero = [{"step": 300, "diagnostics": {"con_steps": 0}}]
    assert contrastive_summary(recipe, zero)["engaged"] is False
    assert "never engaged" in never_engaged_note(contrastive_summary(recipe, zero))
    assert contrastive_summary(recipe, [{"step": 300}])["engaged"] is None  # not recorded: unknown
    late = {"algorithm": "bacon", "steps": 10, "bacon": {"start": 1.0}}
    assert contrastive_summary(late, [])["engaged"] is False  # never scheduled
    assert contrastive_summary({"algorithm": "abc", "steps": 10}, []) is None


def test_bacon_card_that_never_engaged_says_so_first(exported, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run, ignore=shutil.ignore_patterns("export"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["diagnostics"] = {"con_steps": 0, "center_valid": [False, False, False]}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(recipe.replace("protocol: release-v2\n", ""))  # an older run
    out = export_run(run)
    body = (out / "README.md").read_text().split("---\n", 2)[2].lstrip().splitlines()
    assert body[0] == f"# {NAME}" and "never engaged" in body[2] and "earlier" in body[4]
    assert "Valid class centers at the last evaluation: 0 of 3" in (out / "README.md").read_text()
    monkeypatch.setenv(zoo.INDEX_ENV, str(tmp_path / "cards" / "index.json"))
    entry = zoo.add(out)
    assert entry["contrastive"]["engaged"] is False and entry["protocol"] == "v1"
    table = zoo.format_table(zoo.load_index())
    assert "BaCon term never engaged" in table and "earlier network" in table


# ---------------------------------------------------------------------------------------------
# plain timm: ViT exports, and what `import bacon_zoo` does


@pytest.mark.slow  # a fresh interpreter (plain timm)
def test_vit_export_loads_in_plain_timm_without_bacon_zoo(tmp_path):
    run = tmp_path / "vit_run"
    net = _make_run(run, backbone="vit_tiny_patch4_32", size=32)
    out = export_run(run)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    assert cfg["model_args"]["img_size"] in (32, [32, 32]) and cfg["model_args"]["patch_size"] == 4
    assert "bacon-zoo is not needed" in (out / "README.md").read_text()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x).logits_abc
    np.save(tmp_path / "x.npy", x.numpy())
    code = f"""
    import sys, numpy as np, timm, torch
    torch.set_num_threads(1)
    model = timm.create_model("local-dir:{out}", pretrained=True).eval()
    x = torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))
    with torch.no_grad():
        np.save({str(tmp_path / "got.npy")!r}, model(x).numpy())
    assert not [m for m in sys.modules if m.startswith("bacon_zoo")], "bacon_zoo was imported"
    print("OK")
    """
    env = _hub_env(tmp_path) | {"PYTHONPATH": ""}  # bacon_zoo is not importable from here
    proc = _run_py(code, env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "got.npy")), ref, rtol=0, atol=0)


@pytest.mark.slow  # a fresh interpreter
def test_import_bacon_zoo_only_registers_models(tmp_path):
    (tmp_path / "index.json").write_text("{ not json")  # would warn or fail if it were read
    code = """
    import sys, warnings, timm
    warnings.simplefilter("error")
    before = {n: timm.models.get_pretrained_cfg(n) for n in ("resnet18", "vit_tiny_patch16_224")}
    import bacon_zoo
    assert timm.is_model("wrn28_2") and not timm.models.is_model_pretrained("wrn28_2.bacon_cifar10_lt")
    assert not [m for m in sys.modules if m.startswith("bacon_zoo.hub")], "import bacon_zoo imported hub"
    assert before == {n: timm.models.get_pretrained_cfg(n) for n in before}
    print("OK")
    """
    proc = _run_py(code, _hub_env(tmp_path, BACON_ZOO_INDEX=str(tmp_path / "index.json")))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_card_lists_this_runs_departures_from_the_release(exported, tmp_path):
    """bf16, BatchNorm not synchronised over several processes, a FixMatch baseline's constant LR."""
    from bacon_zoo.hub.card import build_card

    out = tmp_path / "export"
    shutil.copytree(exported["out"], out)
    summary = json.loads((out / "summary.json").read_text())
    summary |= {"precision": "bf16", "num_processes": 2, "device": "cpu: some CPU"}
    (out / "summary.json").write_text(json.dumps(summary))
    recipe = (out / "recipe.yaml").read_text().replace("algorithm: bacon", "algorithm: fixmatch")
    (out / "recipe.yaml").write_text(recipe.replace("sync_bn: false", "sync_bn: true"))
    text = build_card(out).text
    assert "precision bf16 (release: fp32)" in text
    assert "per-process BatchNorm over 2 processes (release: SyncBatchNorm across GPUs)" in text
    assert (
        "This FixMatch baseline uses the release's BaCon protocol (constant learning rate)" in text
    )
    assert "docs/differences.md" in text
    text = build_card(exported["out"]).text  # fp32, one process, BaCon: none of them
    assert "release: fp32" not in text and "per-process BatchNorm" not in text
    assert "FixMatch baseline" not in text


@pytest.mark.slow  # a fresh interpreter per snippet
def test_readme_load_pretrained_snippet_runs_as_written(exported, tmp_path):
    """`import bacon_zoo` then `bacon_zoo.hub.load_pretrained(...)`, as the README and the docs write
    it, in a fresh interpreter: only the hub id becomes a local export (offline)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (page.name, b.split("```")[0])
        for page in pages
        for b in page.read_text().split("```python\n")[1:]
        if 'bacon_zoo.hub.load_pretrained("hf-hub:ORG/NAME")' in b.split("```")[0]
    ]
    assert any(name == "export-and-hub.md" for name, _ in blocks), [name for name, _ in blocks]
    env = _hub_env(tmp_path, HF_HUB_OFFLINE="1") | {"PYTHONPATH": ""}
    for name, block in blocks:
        lines = [
            line
            for line in block.splitlines()
            if line.startswith("import bacon_zoo")
            or ("bacon_zoo.hub.load_pretrained(" in line and "hf-hub:ORG/NAME" in line)
        ]
        assert lines[0].startswith("import bacon_zoo") and len(lines) >= 2, (name, block)
        code = "\n".join(lines).replace("hf-hub:ORG/NAME", f"local-dir:{exported['out']}")
        code += "\nprint('OK', type(model).__name__, tuple(data_cfg['input_size']))"
        proc = _run_py(code, env)
        assert proc.returncode == 0 and "OK" in proc.stdout, (name, proc.stderr[-3000:])
        assert f"(3, {SIZE}, {SIZE})" in proc.stdout, name
