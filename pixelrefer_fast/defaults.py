"""Defaults shared by the API and the command line, defined once.

`DEFAULT_MAX_NEW_TOKENS`: the generation budget of `describe()` and `pixelrefer-fast describe`
(2048, the official inference scripts' value; generation stops earlier at the end-of-sequence token).
`DECODINGS`: the decoding paths of `describe(decoding=...)` and `--decoding`; the first is the default.
"""

from __future__ import annotations

DEFAULT_MAX_NEW_TOKENS = 2048
DECODINGS = ("fast", "hf")

__all__ = ["DECODINGS", "DEFAULT_MAX_NEW_TOKENS"]
