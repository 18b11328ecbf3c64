"""Shared fixtures: where the real inspection images are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSAC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
TINY_ARCH = "ViT-B-16-plus-240-tiny"
FULL_ARCH = "ViT-B-16-plus-240"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (MVTec AD bottle, AutoVI pipe_staple, brain MRI); see its README."""
    if not (SHARED_DATA / "mvtec_ad" / "bottle").is_dir():
        pytest.skip(f"real inspection images not found at {SHARED_DATA} (set FSAC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bottle(shared_data) -> Path:
    return shared_data / "mvtec_ad" / "bottle"
