"""Shared fixtures: the real data the tests run on (../shared/data, pydicom's test files)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA} (the shared data folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def busi_dir(shared_data: Path) -> Path:
    """The BUSI ultrasound PNGs (780 files, names with spaces and parentheses)."""
    path = shared_data / "busi_256" / "Dataset_BUSI_with_GT"
    if not path.is_dir():
        pytest.skip(f"BUSI PNGs not found at {path}")
    return path


@pytest.fixture(scope="session")
def pneumonia_npz(shared_data: Path) -> Path:
    """PneumoniaMNIST in MedMNIST's .npz layout."""
    path = shared_data / "pneumoniamnist_28" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"PneumoniaMNIST not found at {path}")
    return path


def testdata_path(name: str) -> Path:
    """A real DICOM test file from pydicom or pydicom-data (installed, never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed (pip install pydicom-data)")
    return Path(path)


testdata_path.__test__ = False  # a helper, not a test, though its name starts with "test"
