"""benchmarks/correction_floor.py's C kernels compute what they stand for (torch's fused AdamW, the correction's
dot products and sweep), so that the floor it reports is the cost of the real work."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_correction_floor_kernels_match_torch(tmp_path):
    import correction_floor

    lib = correction_floor.compile_kernels(str(tmp_path))
    buffers = correction_floor.check_kernels(lib, 10_000)  # raises SystemExit on a mismatch
    assert set(buffers) == {"w", "g", "m", "v", "mo", "mt"}
