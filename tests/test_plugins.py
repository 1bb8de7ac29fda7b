"""The algorithm plug-in architecture: one registry, composite names, today's BaCon unchanged, a toy
plug-in that trains, evaluates, exports and gets a card from its own module alone."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from conftest import tiny_sets

from bacon_zoo.algorithms import (
    ALIASES,
    PLUGINS,
    Plugin,
    algorithm_names,
    canonical,
    create_algorithm,
    describe,
    model_heads,
    register,
    unregister,
)
from bacon_zoo.config import SECTIONS, TrainConfig, at_least, build_config
from bacon_zoo.errors import UserError
from bacon_zoo.models import Head

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bacon_zoo"


# ---------------------------------------------------------------------------------------------
# one list of algorithm names: the registry's


def name_lists(source: str, vocabulary: set[str]) -> list[tuple[int, list[str]]]:
    """(line, names) of every list / tuple / set display or dict whose keys hold two or more
    algorithm or plug-in names: a second registry written by hand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        names = [e.value for e in items if isinstance(e, ast.Constant) and e.value in vocabulary]
        if len(names) >= 2:
            found.append((node.lineno, names))
    return found


def vocabulary() -> set[str]:
    return set(algorithm_names()) | set(PLUGINS) | set(ALIASES)


def test_the_detector_finds_a_hand_written_list():
    vocab = vocabulary()
    assert name_lists('ALGOS = ("fixmatch", "abc", "bacon")\n', vocab) == [
        (1, ["fixmatch", "abc", "bacon"])
    ]
    assert name_lists('HEADS = {"abc": 1, "fixmatch+abc+bacon": 2}\n', vocab)
    assert not name_lists('x = cfg.algorithm == "bacon"\nif "bacon" in sections: pass\n', vocab)


def test_no_second_list_of_algorithm_names_outside_the_registry():
    """Only bacon_zoo/algorithms/ may name several algorithms together; everything else asks it."""
    vocab = vocabulary()
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "algorithms"):
            continue
        for line, names in name_lists(path.read_text(encoding="utf-8"), vocab):
            offenders.append(f"{path.relative_to(ROOT)}:{line} {names}")
    assert not offenders, "algorithm names listed outside the registry:\n" + "\n".join(offenders)


def test_names_compose_a_base_and_terms():
    names = algorithm_names(aliases=False)
    assert names[:3] == ["fixmatch", "fixmatch+abc", "fixmatch+abc+bacon"]
    assert "fixmatch+bacon" not in names  # BaCon's anchors need a balanced head
    assert canonical("bacon") == "fixmatch+abc+bacon" and canonical("abc") == "fixmatch+abc"
    with pytest.raises(UserError, match=r"algorithm 'bacon\+abc' is not one of"):
        canonical("bacon+abc")
    with pytest.raises(UserError, match=r"algorithm 'fixmatch\+abc\+abc' is not one of"):
        build_config(None, None, ["algorithm=fixmatch+abc+abc"])
    info = describe("bacon")
    assert (info["base"], info["imbalance"], info["eval_head"]) == ("FixMatch", "ABC", "abc")
    assert info["contrastive"] != "none" and info["notes"] == []
    assert describe("fixmatch")["imbalance"] == "none"


def test_the_network_gets_only_the_heads_its_algorithm_asks_for():
    cfg = TrainConfig()
    cfg.bacon.proj_dim = 7  # the projection size comes from the BaCon term's own section
    assert model_heads(cfg, "fixmatch") == ()
    assert [h.name for h in model_heads(cfg, "abc")] == ["abc"]
    heads = model_heads(cfg, "fixmatch+abc+bacon")
    assert [(h.name, h.dim, h.kind) for h in heads] == [
        ("abc", None, "classifier"),
        ("proj", 7, "embedding"),
    ]


def test_each_plugin_gets_its_own_section():
    cfg = build_config(None, None, ["bacon.tau0=0.2", "abc.weight=0.5", "fixmatch.lambda_u=2"])
    algo = create_algorithm("bacon", cfg, 10, [5] * 10, 40, 80)
    assert algo.fixmatch.cfg is cfg.fixmatch and algo.abc.cfg is cfg.abc
    assert algo.bacon.cfg.tau0 == 0.2 and not hasattr(algo.bacon.cfg, "algorithm")


# ---------------------------------------------------------------------------------------------
# fixmatch+abc+bacon is today's bacon, to the bit


class Out(NamedTuple):
    logits: torch.Tensor
    logits_abc: torch.Tensor
    proj: torch.Tensor


def train_linear_heads(name: str, steps: int = 12) -> dict[str, Any]:
    """A tiny 'network' (three linear heads on fixed random features) trained by SGD with the
    algorithm's loss: per-step losses, weight sums and state sums. BaCon's term starts at step 4."""
    K, D, B, mu, N_L, N_U = 5, 8, 6, 2, 20, 40
    U = mu * B
    cfg = TrainConfig()
    cfg.bacon.proj_dim, cfg.bacon.start = 4, 0.25
    cfg.bacon.anchor_threshold = cfg.bacon.bank_threshold = 0.3
    cfg.abc.threshold = cfg.fixmatch.threshold = 0.3
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict(
        {"h": torch.nn.Linear(D, K), "a": torch.nn.Linear(D, K), "g": torch.nn.Linear(D, 4)}
    )
    opt = torch.optim.SGD(heads.parameters(), lr=0.5, momentum=0.9)
    algo = create_algorithm(name, cfg, K, [8, 5, 3, 2, 2], N_L, N_U, seed=3)
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(B + 2 * U, D, generator=g) * 2
        batch = {
            "y_lb": torch.randint(0, K, (B,), generator=g),
            "idx_lb": torch.randint(0, N_L, (B,), generator=g),
            "idx_ulb": torch.randint(0, N_U, (U,), generator=g),
            "y_ulb": torch.randint(-1, K, (U,), generator=g),
        }
        loss, _ = algo.loss(Out(heads["h"](x), heads["a"](x), heads["g"](x)), batch, step, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        algo.after_step(step, steps)
        losses.append(float(loss.detach()))
    states = {k: v.clone() for k, v in algo.state_dict().items()}
    weights = {k: v.clone() for k, v in heads.state_dict().items()}
    return {"losses": losses, "weights": weights, "state": states}


# recorded with the single-class FixMatch/ABC/BaCon algorithms before the plug-in refactor (same
# script, `bacon` then); float32 on CPU, so compared to 1e-5 (rounding may differ across CPUs)
BEFORE_REFACTOR = {
    "losses": [
        8.962947845458984, 9.338459014892578, 11.886062622070312, 15.203054428100586,
        27.53847885131836, 27.857860565185547, 24.243837356567383, 22.743640899658203,
        44.511810302734375, 25.10311508178711, 31.09759521484375, 30.28237533569336,
    ],
    "weights": {"h.weight": -1.0941157117486, "a.weight": 1.4311370849609375},
}  # fmt: skip


def test_fixmatch_abc_bacon_is_todays_bacon():
    alias, composite = train_linear_heads("bacon"), train_linear_heads("fixmatch+abc+bacon")
    assert alias["losses"] == composite["losses"]
    for part in ("weights", "state"):
        assert alias[part].keys() == composite[part].keys()
        for k, v in alias[part].items():
            assert torch.equal(v, composite[part][k]), k
    assert any(k.startswith("bacon.bank.") for k in alias["state"])
    torch.testing.assert_close(
        torch.tensor(composite["losses"]),
        torch.tensor(BEFORE_REFACTOR["losses"]),
        rtol=1e-5,
        atol=1e-5,
    )
    for k, want in BEFORE_REFACTOR["weights"].items():
        got = float(composite["weights"][k].double().sum())
        assert abs(got - want) < 1e-4, (k, got, want)


def test_old_checkpoint_keys_load():
    """Older single-class algorithms saved their banks as `bank.*`: they load under `bacon.bank.*`."""
    a = create_algorithm("bacon", TrainConfig(), 5, [3, 2, 1, 1, 1], 7, 9)
    a.bacon.bank.labels.fill_(2)
    legacy = {k.removeprefix("bacon."): v for k, v in a.state_dict().items()}
    b = create_algorithm("bacon", TrainConfig(), 5, [3, 2, 1, 1, 1], 7, 9)
    b.load_state_dict(legacy)
    assert (b.bacon.bank.labels == 2).all()


# ---------------------------------------------------------------------------------------------
# a toy algorithm: one module (this one) and a decorator, nothing else touched


@dataclass
class ToyConfig:
    """A toy base: CE on labeled images for the main head and for its own "toy" head."""

    weight: float = field(default=0.5, metadata={"range": at_least(0)})


class Toy(Plugin):
    name = "toy"
    Config = ToyConfig
    title = "Toy"
    summary = "a toy base (supervised cross-entropy only)"
    balanced_head = "toy"
    unlabeled_views = {"x_w": "weak"}  # one view per unlabeled image is enough for it

    @classmethod
    def heads(cls, cfg: ToyConfig) -> tuple[Head, ...]:
        return (Head("toy", description="toy head of the toy test plug-in"),)

    def loss(self, out, batch, step, total_steps, algo):
        b = int(batch["y_lb"].shape[0])
        main = F.cross_entropy(out.logits[:b].float(), batch["y_lb"])
        toy = F.cross_entropy(out.logits_toy[:b].float(), batch["y_lb"])
        return main + self.cfg.weight * toy, {"loss_toy": toy.detach()}

    def diagnostics(self) -> dict[str, Any]:
        return {"toy_weight": self.cfg.weight}


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    unregister("toy")
    AcceleratorState._reset_state(True)


def test_toy_plugin_trains_evaluates_exports_and_gets_a_card(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "toy" in algorithm_names() and "toy" in SECTIONS
    assert "toy+abc" not in algorithm_names()  # ABC's head would be a second balanced head
    tiny = tiny_sets(
        "steps=4",
        "eval_every=2",
        "checkpoint_every=2",
        "max_eval_samples=40",
        "algorithm=toy",
        "toy.weight=2",
        f"output_dir={tmp_path / 'run'}",
    )
    with pytest.raises(UserError, match="toy.weight must be >= 0"):
        build_config(None, None, [*tiny, "toy.weight=-1"])
    cfg = build_config(None, None, tiny)
    assert cfg.toy.weight == 2.0

    from bacon_zoo.hub.export import export_run
    from bacon_zoo.run.weights import load_bacon_net
    from bacon_zoo.train.trainer import train

    result = train(cfg)
    assert result.status == "complete" and result.summary["eval_head"] == "toy"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and rows[-1]["diagnostics"]["toy_weight"] == 2.0

    out = export_run(tmp_path / "run")
    net_info = json.loads((out / "bacon_net.json").read_text())
    assert net_info["eval_head"] == "toy"
    assert net_info["heads"] == [{"name": "toy", "dim": None, "kind": "classifier"}]
    card = (out / "README.md").read_text()
    assert "a toy base (supervised cross-entropy only)" in card
    assert "toy head of the toy test plug-in" in card and "base algorithm: Toy" in card
    net = load_bacon_net(out)
    assert [h.name for h in net.heads] == ["toy"] and not hasattr(net, "proj")


def test_the_study_grid_takes_composite_names(tmp_path):
    from bacon_zoo.study.runner import plan_study

    names = ["fixmatch+abc+bacon", "acr", "acr+bacon"]
    study = plan_study(tmp_path / "s", grid={"algorithm": names}, seeds=[0], sets=["steps=10"])
    assert sorted(c.values["algorithm"] for c in study.cells) == sorted(names)
    assert len({c.name for c in study.cells}) == 3  # '+' made safe in the cell folder names
    with pytest.raises(UserError, match=r"algorithm 'acr\+abc' is not one of"):
        plan_study(tmp_path / "t", grid={"algorithm": ["acr+abc"]}, seeds=[0])
