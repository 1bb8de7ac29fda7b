"""The package as users install it: a wheel built with pip, installed (not editable) into a fresh venv and
run from a folder outside the checkout.

The venv sees this environment's dependencies through a path file (no network: `--no-deps
--no-build-isolation`), but its own site-packages comes first, so `bacon_zoo` is the wheel's copy. The
fast test checks pyproject's package list against the source tree; the slow one builds and runs the wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the build needs from the checkout (pyproject's package-dir maps recipes/ and model_cards/)
SOURCES = ("pyproject.toml", "README.md", "bacon_zoo", "recipes", "model_cards")
# a digits run of a few steps, by recipe
STEPS = ["--steps", "4", "--set", "eval_every=2", "--set", "checkpoint_every=2", "--set", "cpu=true"]  # fmt: skip


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "bacon_zoo").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk - listed == set(), "add these packages to pyproject's [tool.setuptools] packages"
    mapped = {pkg: ROOT / folder for pkg, folder in cfg["package-dir"].items()}
    assert listed - on_disk == set(mapped)
    assert all((folder / "__init__.py").is_file() for folder in mapped.values())


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of the checkout, installed into a fresh venv; returns its paths."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=skip)
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wheel = next((tmp / "dist").glob("bacon_zoo-*.whl"))

    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True, timeout=120,
    )  # fmt: skip
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    )  # fmt: skip
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
         "--no-build-isolation", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    work, home = tmp / "work", tmp / "home"
    work.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACON_ZOO_", "XDG_", "HF_"))}
    env.pop("PYTHONPATH", None)
    env |= {
        "HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
        "BACON_ZOO_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
    }  # fmt: skip
    return {"wheel": wheel, "venv": venv, "python": python, "site": site, "work": work,
            "home": home, "env": env}  # fmt: skip


def _run(installed: dict, *cmd: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """A command with the venv's interpreter (or its console script), in the folder outside the
    checkout; fails the test with its output when it fails."""
    exe = installed["venv"] / "bin" / str(cmd[0])
    argv = [str(exe if exe.is_file() else cmd[0]), *map(str, cmd[1:])]
    proc = subprocess.run(
        argv, cwd=installed["work"], env=installed["env"], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_installed_wheel_outside_the_checkout(installed):
    names = {n for n in zipfile.ZipFile(installed["wheel"]).namelist()}
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert {f"bacon_zoo/recipes/{r}.yaml" for r in recipes} <= names
    assert "bacon_zoo/model_cards/index.json" in names
    source_modules = {str(p.relative_to(ROOT)) for p in (ROOT / "bacon_zoo").rglob("*.py")}
    assert source_modules <= names

    # the wheel's copy is the one imported, and every recipe resolves by name
    code = (
        "import json, bacon_zoo\n"
        "from bacon_zoo.config import RECIPES_DIR, load_recipe\n"
        "names = sorted(p.stem for p in RECIPES_DIR.glob('*.yaml'))\n"
        "for n in names: load_recipe(n)\n"
        "print(json.dumps({'file': bacon_zoo.__file__, 'recipes': names}))\n"
    )
    out = json.loads(_run(installed, "python", "-c", code).stdout.splitlines()[-1])
    assert Path(out["file"]).is_relative_to(installed["site"]) and out["recipes"] == recipes
    cfg = _run(installed, "bacon-zoo", "train", "--recipe", "cifar10_lt", "--print-config").stdout
    assert "n1: 1000" in cfg and "imb_ratio_l: 100" in cfg

    # the zoo lists the bundled entries
    bundled = json.loads((ROOT / "model_cards" / "index.json").read_text())["models"]
    table = _run(installed, "bacon-zoo", "zoo").stdout
    assert bundled and all(e["name"] in table for e in bundled)

    # the digits demo trains by recipe with the base install, and exports
    _run(installed, "bacon-zoo", "train", "--recipe", "demo_digits", "--output-dir", "demo", *STEPS)
    export = installed["work"] / "demo" / "export"
    summary = json.loads((installed["work"] / "demo" / "summary.json").read_text())
    assert summary["status"] == "complete" and (export / "model.safetensors").is_file()

    # zoo add writes to the user's data folder, never into site-packages
    cards = installed["site"] / "bacon_zoo" / "model_cards"
    before = _digest(cards)
    added = _run(installed, "bacon-zoo", "zoo", "add", export).stdout
    index = installed["home"] / ".local" / "share" / "bacon-zoo" / "model_cards" / "index.json"
    entry = json.loads(index.read_text())["models"][0]
    assert entry["name"] in added and _digest(cards) == before
    assert (index.parent / f"{entry['name']}.md").is_file()
    table = _run(installed, "bacon-zoo", "zoo").stdout
    assert entry["name"] in table and all(e["name"] in table for e in bundled)

    # accelerate launch -m bacon_zoo.cli train, with the launcher's fp32 honoured over `auto`
    _run(
        installed, "python", "-m", "accelerate.commands.launch", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "bacon_zoo.cli", "train", "--recipe", "demo_digits", "--output-dir", "launched",
        "--set", "export=false", *STEPS,
    )  # fmt: skip
    summary = json.loads((installed["work"] / "launched" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["precision"] == "fp32"
