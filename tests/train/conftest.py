"""Fixtures for the training side: the tiny backbone, built once per session."""

import pytest

from tests.conftest import TINY_ARCH


@pytest.fixture(scope="session")
def tiny_backbone():
    from fsac.train.backbone import load_backbone

    return load_backbone(TINY_ARCH, "random", device="cpu", quiet=True)


@pytest.fixture(scope="session")
def bottle_shots(bottle):
    return sorted((bottle / "train" / "good").glob("*.png"))[:4]
