"""Importing the packages needs neither triton, flash-attn nor xformers, and never initialises CUDA."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_without_optional_backends_and_without_cuda_init():
    script = textwrap.dedent(
        """
        import sys
        for hidden in ("triton", "flash_attn", "xformers"):
            sys.modules[hidden] = None  # "import hidden" now raises ImportError, as if not installed
        import torch
        import pixelrefer_kernels, pixelrefer_kernels.info
        import pixelrefer_fast, pixelrefer_fast.cli, pixelrefer_fast.compat, pixelrefer_fast.profiling
        from pixelrefer_kernels import _runtime
        from transformers import AutoConfig
        assert not (_runtime.has_triton() or _runtime.has_flash_attn() or _runtime.has_xformers())
        assert _runtime.triton_reasons(torch.device("cuda"))[0].startswith("triton is not installed")
        assert type(AutoConfig.for_model("pixelreferlite_qwen2")).__name__ == "PixelReferFastLiteConfig"
        assert type(AutoConfig.for_model("pixelrefer_qwen2")).__name__ == "PixelReferFastConfig"
        assert all(hasattr(torch.ops.pixelrefer, op) for op in pixelrefer_kernels.library.OPS)  # registered at import
        assert not torch.cuda.is_initialized()
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
