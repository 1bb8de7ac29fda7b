"""pytest plugin: run timm's own tests/test_models.py against only the models `import bacon_zoo` registers.

Usage: `make timm-tests` (downloads the installed timm version's sdist and runs its tests/test_models.py
with this plugin: PYTHONPATH=tools pytest -p bacon_timm_plugin test_models.py).

timm parametrizes its tests with timm.list_models(...) at import time; this plugin (loaded before the test
module is imported) narrows list_models to our models, ignoring the `module=` family filter (our WRNs,
CIFAR ResNets and 32-px ViTs all implement forward_intermediates), so filters like 'vit_*' still apply.
Tests with hard-coded timm model names, and those that download weights, are deselected.
"""

import timm
import timm.models

import bacon_zoo  # noqa: F401  (registers the models)
from bacon_zoo.models import list_backbones

OURS = set(list_backbones())
DOWNLOAD_TESTS = {
    "test_model_inference",
    "test_model_load_pretrained",
    "test_model_features_pretrained",
}
_orig = timm.list_models


def _ours_list_models(filter="", module="", *args, **kwargs):
    names = _orig(filter, "", *args, **kwargs)
    return [n for n in names if n.split(".", 1)[0] in OURS]


timm.list_models = _ours_list_models
timm.models.list_models = _ours_list_models


def pytest_collection_modifyitems(config, items):
    keep, drop, downloads = [], [], 0
    for item in items:
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name") if spec else None
        test = item.originalname if hasattr(item, "originalname") else item.name
        ok = isinstance(name, str) and name.split(".", 1)[0] in OURS and test not in DOWNLOAD_TESTS
        (keep if ok else drop).append(item)
        downloads += (
            isinstance(name, str) and name.split(".", 1)[0] in OURS and test in DOWNLOAD_TESTS
        )
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    config._bacon_counts = (downloads, len(drop) - downloads)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    downloads, others = getattr(config, "_bacon_counts", (0, 0))
    terminalreporter.write_line(
        f"bacon plugin: deselected {downloads} download tests of our models and {others} tests "
        "hard-wired to other timm models"
    )
