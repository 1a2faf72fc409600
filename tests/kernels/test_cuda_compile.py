"""Every Triton kernel compiles for sm_90 (H100/H200) with the dtypes and tiles the launchers use.

CPU tests run the kernels in the interpreter, which never invokes the real compiler; this test does,
ahead of time, with the ptxas that ships in the Triton wheel (see `cuda_compile_check.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

REPO_ROOT = Path(__file__).resolve().parents[2]


def _has_ptxas() -> bool:
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


@pytest.mark.skipif(not _has_ptxas(), reason="this Triton wheel has no CUDA backend (ptxas)")
def test_every_kernel_compiles_for_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run(
        [sys.executable, "-m", "tests.kernels.cuda_compile_check"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0 and not failures, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 failure(s)" in result.stdout
