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


@pytest.fixture
def last_mlp_tokens(tiny_backbone):
    """The token count of every call into the tiny encoder's last MLP, while the test runs
    (1 per image when the last block ran for [CLS] alone, `fsac.train.last_block`)."""
    from fsac.train.last_block import last_block_of

    counts: list[int] = []
    hook = last_block_of(tiny_backbone.visual).mlp.register_forward_hook(
        lambda m, i, o: counts.append(i[0].shape[1]))
    try:
        yield counts
    finally:
        hook.remove()
