"""Shared test helpers: the `needs_cifar` skip and the path of the local CIFAR-10 copy."""

from __future__ import annotations

from pathlib import Path

import pytest

CIFAR_PATH = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CIFAR_PATH.exists():
        return
    skip = pytest.mark.skip(reason=f"needs the local CIFAR-10 copy at {CIFAR_PATH}")
    for item in items:
        if "needs_cifar" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cifar_path() -> Path:
    """The real CIFAR-10 in the uoft-cs/cifar10 layout (plain_text/*.parquet)."""
    return CIFAR_PATH
