"""Defaults shared by the API and the command line, defined once.

`DEFAULT_MAX_NEW_TOKENS`: the generation budget of `describe()` and `pixelrefer-fast describe`
(2048, the official inference scripts' value; generation stops earlier at the end-of-sequence token).
`DECODINGS`: the decoding paths of `describe(decoding=...)` and `--decoding`; the first is the default.
`DTYPES`: the weight dtypes the commands' `--dtype` accepts (`auto`: the checkpoint's).
`KERNEL_MODES`: the kernel switches `--kernels` accepts, those of `pixelrefer_kernels.force`.
"""

from __future__ import annotations

from pixelrefer_kernels import MODES as KERNEL_MODES

DEFAULT_MAX_NEW_TOKENS = 2048
DECODINGS = ("fast", "hf")
DTYPES = ("auto", "bfloat16", "float16", "float32")

__all__ = ["DECODINGS", "DEFAULT_MAX_NEW_TOKENS", "DTYPES", "KERNEL_MODES"]
