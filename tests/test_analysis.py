"""Feature-space diagnostics (pure functions, the stateful counter) and `bacon-zoo analyze` end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bacon_zoo.algorithms import MemoryBank
from bacon_zoo.algorithms.bank import intra_class_spread
from bacon_zoo.errors import UserError
from bacon_zoo.metrics import classification_metrics, head_medium_tail
from bacon_zoo.models import BaconOutput
from bacon_zoo.train.diagnostics import TrainingDiagnostics, center_drift, pseudo_label_quality

S2 = 1.0 / math.sqrt(2.0)

# ---------------------------------------------------------------------------------------------
# pure functions against hand-computed values


def test_center_drift_is_cosine_distance_of_directions():
    prev = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    now = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    valid = torch.tensor([True, True, True, True, False])
    d = center_drift(prev, now, valid)
    expected = [0.0, 1.0 - S2, 2.0, 1.0]
    assert torch.allclose(d[:4], torch.tensor(expected), atol=1e-6)
    assert math.isnan(d[4])
    # = half the squared L2 distance of the normalised centers
    a, b = prev[1] / prev[1].norm(), now[1] / now[1].norm()
    assert d[1].item() == pytest.approx(0.5 * (a - b).pow(2).sum().item(), abs=1e-6)


def test_intra_class_spread_over_written_labelled_slots():
    feats = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    )
    labels = torch.tensor([0, 0, 1, 1, 2, -1, 0])
    written = torch.tensor([True, True, True, True, False, True, False])
    s = intra_class_spread(feats, labels, written, num_classes=4)
    # class 0: center ~ (1, 1) -> both at 45 degrees; class 1: same direction; 2 unwritten; 3 empty
    assert s[0].item() == pytest.approx(1.0 - S2, abs=1e-6)
    assert s[1].item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(s[2]) and math.isnan(s[3])


def test_pseudo_label_quality_precision_and_recall():
    cm = torch.tensor([[3, 1, 0], [0, 2, 2], [1, 0, 0]])  # [true, pseudo]
    p, r = pseudo_label_quality(cm)
    assert p.tolist() == pytest.approx([3 / 4, 2 / 3, 0.0])
    assert r.tolist() == pytest.approx([3 / 4, 2 / 4, 0.0])
    p2, r2 = pseudo_label_quality(cm, support=torch.tensor([10, 4, 0]))
    assert torch.equal(p2, p)
    assert r2[:2].tolist() == pytest.approx([0.3, 0.5]) and math.isnan(r2[2])
    p3, _ = pseudo_label_quality(torch.tensor([[1, 0], [0, 0]]))
    assert math.isnan(p3[1])  # never predicted


# ---------------------------------------------------------------------------------------------
# TrainingDiagnostics on synthetic outputs


def _out(weak: torch.Tensor, b: int, k: int, main_differs: bool = True) -> BaconOutput:
    """A BaconOutput over [labeled | weak | strong] whose ABC logits on the weak views are `weak`."""
    u = len(weak)
    abc = torch.cat([torch.zeros(b, k), weak, torch.zeros(u, k)])
    main = torch.roll(abc, 1, dims=1) if main_differs else abc
    return BaconOutput(torch.zeros(b + 2 * u, 4), main, abc, torch.zeros(b + 2 * u, 2))


def _confident(pseudo: list[int], k: int, sure: list[bool]) -> torch.Tensor:
    """Logits whose softmax max is ~1 at `pseudo` when sure, else uniform (1/k)."""
    return torch.stack(
        [20.0 * torch.eye(k)[p] if s else torch.zeros(k) for p, s in zip(pseudo, sure)]
    )


def _batch(y_ulb: list[int], idx_ulb: list[int], b: int = 2) -> dict[str, torch.Tensor]:
    return {
        "y_lb": torch.zeros(b, dtype=torch.long),
        "idx_lb": torch.arange(b),
        "idx_ulb": torch.tensor(idx_ulb),
        "y_ulb": torch.tensor(y_ulb),
    }


def test_training_diagnostics_pseudo_label_window():
    k = 3
    diag = TrainingDiagnostics(k, "abc", 0.9, [4, 2, 1], [6, 3, 2], num_labeled=7)
    # step 1: pseudo 0 0 1 2 | true 0 1 1 -1 | the last-but-one is not confident
    weak = _confident([0, 0, 1, 2], k, [True, True, False, True])
    diag.update(_out(weak, 2, k), _batch([0, 1, 1, -1], [0, 1, 2, 3]))
    # step 2: pseudo 1 1 | true 1 2
    diag.update(_out(_confident([1, 1], k, [True, True]), 2, k), _batch([1, 2], [4, 5]))
    d = diag.compute()  # no algo: no bank numbers
    # confident with known truth: (0,0) (1,0) (1,1) (2,1) -> confusion[true, pseudo]
    assert d["window_steps"] == 2
    assert d["pl_seen"] == [1, 3, 1]
    assert d["pl_confident"] == [2, 2, 1]  # the -1 sample's confident pseudo-label 2 counts too
    assert d["pl_precision"] == [50.0, 50.0, None]  # class 2's only pseudo-label has no truth
    assert d["pl_recall"] == [100.0, pytest.approx(100 / 3, abs=1e-3), 0.0]
    assert d["pl_accuracy"] == 50.0
    assert d["pl_mask"] == pytest.approx(5 / 6)
    assert "center_drift" not in d
    json.dumps(d, allow_nan=False)
    # the window is reset
    e = diag.compute()
    assert e["window_steps"] == 0 and e["pl_seen"] == [0, 0, 0] and e["pl_precision"] == [None] * 3


def test_training_diagnostics_checkpoint_counters():
    """One joint counter per window, saved as the three counters with their trash bins: confusion
    [true * K + pseudo] (known and confident), seen [true] and confident [pseudo] (last: unknown)."""
    k = 3
    diag = TrainingDiagnostics(k, "abc", 0.9, [1, 1, 1], [2, 2, 2], num_labeled=3)
    weak = _confident([0, 2, 1, 1, 0], k, [True, True, False, True, True])
    diag.update(_out(weak, 2, k), _batch([0, 1, -1, 5, 2], [0, 1, 2, 3, 4]))  # 5: not a class
    state = diag.state_dict()
    want_confusion = torch.zeros(k * k + 1, dtype=torch.long)
    want_confusion[[0 * k + 0, 1 * k + 2, 2 * k + 0]] = 1
    want_confusion[k * k] = 2  # the unknown truths -1 and 5
    assert torch.equal(state["confusion"], want_confusion)
    assert state["seen"].tolist() == [1, 1, 1, 2] and state["confident"].tolist() == [2, 1, 1, 1]
    again = TrainingDiagnostics(k, "abc", 0.9, [1, 1, 1], [2, 2, 2], num_labeled=3)
    again.load_state_dict(state)
    assert all(torch.equal(again.state_dict()[n], state[n]) for n in ("confusion", "seen"))
    assert torch.equal(again.state_dict()["confident"], state["confident"])


def test_training_diagnostics_uses_the_eval_head():
    k = 3
    weak = _confident([0, 1], k, [True, True])
    for head, expected in (("abc", [1, 1, 0]), ("main", [0, 1, 1])):  # main = abc rolled by one
        diag = TrainingDiagnostics(k, head, 0.9, [1, 1, 1], [1, 1, 1], num_labeled=3)
        diag.update(_out(weak, 2, k), _batch([0, 1], [0, 1]))
        assert diag.compute()["pl_confident"] == expected


def _bank() -> MemoryBank:
    """K = 3, 2 labeled + 4 unlabeled slots, 2-d features."""
    bank = MemoryBank(3, num_labeled=2, num_unlabeled=4, dim=2)
    slots = torch.arange(6)
    bank.update_labels(
        slots, torch.tensor([0, 1, 0, 1, 0, 2]), torch.tensor([1, 1, 1, 1, 1, 0]).bool()
    )
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0]])
    bank.update_features(slots, feats, torch.tensor([1, 1, 1, 1, 0, 0]).bool())
    return bank


def test_bank_statistics_for_the_diagnostics():
    bank = _bank()  # label bank [0, 1 | 0, 1, 0, -1] (slot 5's write is masked out)
    lab, unl = bank.label_counts_by_part()
    assert lab.tolist() == [1, 1, 0] and unl.tolist() == [2, 1, 0]
    assert torch.equal(lab + unl, bank.class_counts())
    assert bank.unlabeled_labels().tolist() == [0, 1, 0, -1]
    spread = bank.intra_class_spread()  # written members: class 0 slots 0, 2; class 1 slots 1, 3
    assert spread[0].item() == pytest.approx(1.0 - S2, abs=1e-6)
    assert spread[1].item() == pytest.approx(0.0, abs=1e-6) and math.isnan(spread[2])


def test_training_diagnostics_bank_numbers():
    bank = _bank()
    algo = SimpleNamespace(bank=bank)
    diag = TrainingDiagnostics(3, "abc", 0.9, [1, 1, 0], [2, 1, 1], num_labeled=2)
    # the unlabeled samples 0..3 are seen with true labels 0, 1, 1, 2 (none confident)
    diag.update(_out(torch.zeros(4, 3), 2, 3), _batch([0, 1, 1, 2], [0, 1, 2, 3]))
    d = diag.compute(algo)
    assert d["center_drift"] == [None, None, None]  # no previous evaluation
    assert d["center_valid"] == [True, True, False]
    # class 0 members: slot 0 (1,0) and slot 2 (0,1) [slot 4 unwritten] -> 1 - cos45 each
    assert d["intra_spread"][0] == pytest.approx(1.0 - S2, abs=1e-5)
    assert d["intra_spread"][1] == pytest.approx(0.0, abs=1e-6) and d["intra_spread"][2] is None
    assert d["bank_labeled"] == [1, 1, 0] and d["bank_unlabeled"] == [2, 1, 0]
    assert d["labeled_counts"] == [1, 1, 0] and d["unlabeled_counts"] == [2, 1, 1]
    # unlabeled bank labels [0, 1, 0, unset] vs truth [0, 1, 1, 2]: class 0 1/2, class 1 1/1
    assert d["bank_precision"] == [50.0, 100.0, None]
    json.dumps(d, allow_nan=False)

    centers_before, _ = bank.centers()
    bank.update_features(torch.tensor([2]), torch.tensor([[1.0, 0.0]]), torch.tensor([True]))
    centers_after, valid = bank.centers()
    d2 = diag.compute(algo)
    expected = center_drift(centers_before, centers_after, valid)
    assert d2["center_drift"][0] == pytest.approx(expected[0].item(), abs=1e-6)
    assert d2["center_drift"][0] == pytest.approx(1.0 - S2, abs=1e-5)  # (.5,.5) -> (1,0)
    assert d2["center_drift"][1] == pytest.approx(0.0, abs=1e-6) and d2["center_drift"][2] is None
    assert d2["intra_spread"][0] == pytest.approx(0.0, abs=1e-6)


def test_training_diagnostics_state_dict_resumes_exactly():
    def fresh() -> TrainingDiagnostics:
        return TrainingDiagnostics(3, "abc", 0.9, [1, 1, 0], [2, 1, 1], num_labeled=2)

    algo = SimpleNamespace(bank=_bank())
    a = fresh()
    a.update(
        _out(_confident([0, 1, 1, 2], 3, [True] * 4), 2, 3), _batch([0, 1, 1, 2], [0, 1, 2, 3])
    )
    a.compute(algo)  # sets the drift reference
    a.update(_out(_confident([2, 1], 3, [True] * 2), 2, 3), _batch([0, 1], [0, 1]))
    b = fresh()
    b.load_state_dict(a.state_dict())
    assert b.compute(algo) == a.compute(algo)
    c = TrainingDiagnostics(3, "abc", 0.9, [1, 1, 0], [2, 1, 1], num_labeled=2, rank=1)
    c.load_state_dict(a.state_dict())
    assert c.steps == 0  # other ranks restart their window (only rank 0's is checkpointed)


# ---------------------------------------------------------------------------------------------
# end to end: two tiny runs (BaCon with the diagnostics wired in, ABC), then `analyze --compare`

# the conftest's tiny digits run, 4 steps with an evaluation and a checkpoint at steps 2 and 4
RUN_SETS = ("steps=4", "eval_every=2", "checkpoint_every=2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_cli, tiny_train) -> dict[str, Path]:
    """A BaCon run (memory bank: every diagnostic) and an ABC run on the same data."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for algorithm in ("bacon", "abc"):
        out[algorithm] = root / algorithm
        result = run_cli(tiny_train(out[algorithm], *RUN_SETS, f"algorithm={algorithm}"))
        assert result.code == 0, result
    return out


@pytest.fixture
def analyze_cli(run_cli):
    """`bacon-zoo analyze ARGV` in this process; returns the CliResult."""
    return lambda argv: run_cli(["analyze", *map(str, argv)])


METRIC_LABELS = {
    "top-1": "top1",
    "balanced accuracy": "balanced_acc",
    "geometric mean": "gmean",
    "head": "head",
    "medium": "medium",
    "tail": "tail",
}
NUM = r"([-+]?[\d.]+|n/a)"


def _num(text: str) -> float:
    return math.nan if text == "n/a" else float(text)


def _close(shown: float, value: float | None, digits: int = 2) -> bool:
    if value is None or math.isnan(value):
        return math.isnan(shown)
    return abs(shown - value) <= 0.51 * 10**-digits


@pytest.mark.slow  # trains three tiny runs (the `runs` fixture) and t-SNEs them
def test_analyze_writes_every_file_and_numbers_match_predictions(runs, tmp_path, analyze_cli):
    out = tmp_path / "analysis"
    result = analyze_cli([runs["bacon"], "--compare", runs["abc"], "--out", out])
    assert result.code == 0, result
    assert result.out.split() == [str(out / "analysis.md"), str(out / "compare_abc.md")]
    for name in (
        "analysis.md",
        "predictions.npz",
        "tsne.png",
        "confusion.png",
        "per_class.png",
        "curves.png",
        "bank.png",
        "compare_abc.md",
        "predictions_abc.npz",
        "compare_abc_per_class.png",
        "compare_abc_tsne.png",
        "compare_abc_deltas.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    z = np.load(out / "predictions.npz")
    labels, preds = z["labels"], z["preds"]
    k = len(z["labeled_counts"])
    counts = z["labeled_counts"].tolist()
    assert (
        z["feats"].shape == (60, 128)
        and z["proj"].shape == (60, 16)
        and z["probs"].shape == (60, k)
    )
    assert np.array_equal(preds, z["probs"].argmax(1))
    # the EMA model of the last checkpoint, on the run's eval head: training's own last evaluation
    trained = np.load(runs["bacon"] / "predictions.npz")
    assert int(trained["step"]) == int(z["step"]) == 4
    assert np.array_equal(trained["labels"], labels)
    assert np.allclose(trained["probs"], z["probs"], atol=1e-5)

    # every number of analysis.md, recomputed from predictions.npz
    md = (out / "analysis.md").read_text()
    m = classification_metrics(preds, labels, k, counts)
    shown = dict(re.findall(rf"^\| ({'|'.join(METRIC_LABELS)}) \| {NUM} \|$", md, re.M))
    assert set(shown) == set(METRIC_LABELS)
    for label, key in METRIC_LABELS.items():
        assert _close(_num(shown[label]), m[key]), (label, shown[label], m[key])
    rows = re.findall(
        rf"^\| (\d+) \| [^|]+ \| (head|medium|tail) \| (\d+) \| (\d+) \| (\d+) \| {NUM} \| {NUM} \|$",
        md,
        re.M,
    )
    assert len(rows) == k
    groups = {
        c: g for g, idx in zip(("head", "medium", "tail"), head_medium_tail(counts)) for c in idx
    }
    for c, g, n_lab, _n_unl, n_test, acc, prec in rows:
        c = int(c)
        assert g == groups[c] and int(n_lab) == counts[c] and int(n_test) == (labels == c).sum()
        assert _close(_num(acc), 100.0 * (preds[labels == c] == c).mean())
        hit = preds == c
        assert _close(_num(prec), 100.0 * (labels[hit] == c).mean() if hit.any() else None)
    # the separation numbers: mean silhouette (cosine) of the saved subsample
    from sklearn.metrics import silhouette_samples

    sep = re.findall(
        rf"^\| (backbone feature|projection)[^|]*\| {NUM} \| {NUM} \| {NUM} \| {NUM} \|$", md, re.M
    )
    assert len(sep) == 2
    sub = z["subsample"]
    for (_, *vals), space in zip(sep, ("feats", "proj")):
        s = silhouette_samples(z[space][sub], labels[sub], metric="cosine")
        ref = [s[[groups[y] == g for y in labels[sub]]].mean() for g in ("head", "medium", "tail")]
        for shown_v, ref_v in zip(vals, [*ref, s.mean()]):
            assert _close(_num(shown_v), float(ref_v), 3)
    assert "Training diagnostics" in md  # the bacon run's metrics.jsonl carries them

    # the comparison page against both prediction files
    zb = np.load(out / "predictions_abc.npz")
    mb = classification_metrics(zb["preds"], zb["labels"], k, counts)
    cmp_md = (out / "compare_abc.md").read_text()
    triples = re.findall(
        rf"^\| ({'|'.join(METRIC_LABELS)}) \| {NUM} \| {NUM} \| {NUM} \|$", cmp_md, re.M
    )
    assert len(triples) == len(METRIC_LABELS)
    for label, va, vb, delta in triples:
        key = METRIC_LABELS[label]
        assert _close(_num(va), m[key]) and _close(_num(vb), mb[key])
        assert _close(_num(delta), m[key] - mb[key])


@pytest.mark.slow  # the `runs` fixture: three tiny runs
def test_diagnostics_records_in_metrics_jsonl(runs):
    rows = [json.loads(x) for x in (runs["bacon"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    d0, d1 = rows[0]["diagnostics"], rows[1]["diagnostics"]
    assert d0["window_steps"] == d1["window_steps"] == 2
    assert sum(d1["pl_seen"]) == 2 * 8  # mu * batch_size unlabeled views per step
    assert all(v is None for v in d0["center_drift"])  # nothing to compare with at the first eval
    assert any(v is not None for v in d1["center_drift"])
    assert sum(d1["bank_labeled"]) + sum(d1["bank_unlabeled"]) > 0
    json.dumps(d1, allow_nan=False)
    abc_rows = [json.loads(x) for x in (runs["abc"] / "metrics.jsonl").read_text().splitlines()]
    assert "center_drift" not in abc_rows[-1]["diagnostics"]  # no memory bank in ABC


@pytest.mark.slow  # the `runs` fixture: three tiny runs
def test_analyze_user_errors(runs, tmp_path, analyze_cli):
    from bacon_zoo.analysis.analyze import analyze
    from bacon_zoo.run import RunDir

    with pytest.raises(UserError, match="not a run directory"):
        analyze(tmp_path)
    with pytest.raises(UserError, match="available steps: 2, 4"):
        RunDir(runs["bacon"]).checkpoint("3")
    assert RunDir(runs["bacon"]).checkpoint("2").name == "step_0000002"
    assert RunDir(runs["bacon"]).checkpoint(None).name == "step_0000004"
    result = analyze_cli([runs["bacon"], "--max-points", "-1"])
    assert result.code == 2 and "--max-points must be >= 0" in result.err
    assert len(result.err.strip().splitlines()) == 1  # one line, no traceback
    result = analyze_cli([runs["bacon"], "--compare", tmp_path / "nope"])
    assert result.code == 2 and "does not exist" in result.err, result


@pytest.mark.slow  # the `runs` fixture: three tiny runs
def test_analyze_checks_compare_and_out_before_any_work(runs, tmp_path, monkeypatch):
    from bacon_zoo.analysis import analyze as module

    def no_work(*a, **kw):
        raise AssertionError("analyze_run started before the arguments were checked")

    monkeypatch.setattr(module, "analyze_run", no_work)
    with pytest.raises(UserError, match="does not exist"):
        module.analyze(runs["bacon"], compare=tmp_path / "missing")
    with pytest.raises(UserError, match="not a run directory"):
        module.analyze(runs["bacon"], compare=tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not written by `bacon-zoo analyze`"):
        module.analyze(runs["bacon"], out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # an empty folder, a folder analyze wrote (manifest) and a missing one are accepted
    empty = tmp_path / "empty"
    empty.mkdir()
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / module.MANIFEST).write_text("{}")
    for out in (empty, ours, tmp_path / "new"):
        with pytest.raises(AssertionError, match="analyze_run started"):
            module.analyze(runs["bacon"], out=out)


@pytest.mark.slow  # the `runs` fixture: three tiny runs
def test_analyze_out_manifest_lists_what_it_wrote(runs, tmp_path, analyze_cli):
    """The e2e test's folder: analysis.json names every file analyze wrote, and nothing else is there."""
    from bacon_zoo.analysis.analyze import MANIFEST

    out = tmp_path / "a"
    assert analyze_cli([runs["abc"], "--out", out, "--max-points", "30"]).code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["written_by"] == "bacon-zoo analyze"
    assert sorted([*manifest["files"], MANIFEST]) == sorted(p.name for p in out.iterdir())
    assert (
        "analysis.md" in manifest["files"] and "bank.png" not in manifest["files"]
    )  # ABC: no bank
    # a second analysis into the same folder is allowed (the folder is analyze's own)
    assert analyze_cli([runs["abc"], "--out", out, "--max-points", "30"]).code == 0


# ---------------------------------------------------------------------------------------------
# plots: the object API and the functions other layers call


def test_plotting_uses_no_pyplot_and_no_global_backend():
    import ast

    import bacon_zoo.analysis.analyze as analyze_mod
    import bacon_zoo.analysis.plots as plots_mod

    for mod in (plots_mod, analyze_mod):
        tree = ast.parse(Path(mod.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all("pyplot" not in a.name for a in node.names), mod.__name__
            if isinstance(node, ast.ImportFrom):
                assert "pyplot" not in (node.module or ""), mod.__name__
                assert not (node.module or "").startswith("bacon_zoo.analysis.analyze")
            if isinstance(node, ast.Attribute) and node.attr == "use":
                assert getattr(node.value, "id", None) != "matplotlib", mod.__name__


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_functions_for_cards_and_studies(tmp_path):
    from bacon_zoo.analysis import plots

    acc = [91.0, 80.5, None, 12.0]
    path = plots.plot_per_class_accuracy(
        acc, [100, 40, 10, 4], [400, 160, 40, 16], ["a", "b", "c", "d"], tmp_path / "pc.png", "t"
    )
    assert path == tmp_path / "pc.png" and min(_png_size(path)) > 100
    # no counts, or counts that do not fit: the bars alone, in class order
    for counts in (None, [1, 2]):
        p = plots.plot_per_class_accuracy(acc, counts, None, ["a"], tmp_path / f"n{counts}.png")
        assert min(_png_size(p)) > 100
    nan = float("nan")
    bars = plots.plot_study_bars(
        ["wrn28_2", "resnet18_cifar\nsteps=300"],
        {"abc": [50.0, 60.0], "bacon": [55.0, nan]},
        tmp_path / "top1.png",
        errors={"abc": [1.0, 0.0], "bacon": [nan, 0.0]},
        ylabel="top-1 (best), %",
        legend_title="algorithm",
    )
    single = plots.plot_study_bars(["all"], {"": [42.0]}, tmp_path / "one.png")
    assert min(_png_size(bars)) > 100 and min(_png_size(single)) > 100
    curves = [
        plots.Curve("abc, consistent", [10, 100], [80.0, 60.0], [1.0, 2.0], color=0),
        plots.Curve("abc, reversed", [100, 10], [50.0, 70.0], None, color=0, dashed=True),
    ]
    vs = plots.plot_vs_imbalance(curves, tmp_path / "vs.png", xticks=[10, 100])
    assert min(_png_size(vs)) > 100
    assert plots.class_groups([1, 5, 3]) == ["tail", "head", "medium"]
