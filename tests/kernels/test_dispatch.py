"""The dispatcher: auto order, forced families and names, reasons, unknown modes, import hygiene."""

from __future__ import annotations

import pytest

import pixelrefer_kernels
from pixelrefer_kernels._dispatch import Backend, BackendUnavailableError, dispatch


def _backends(triton_reasons=(), flash_reasons=("flash-attn is not installed",)):
    return [
        Backend("triton", "triton", lambda x: list(triton_reasons), lambda x: ("triton", x)),
        Backend("flash_attn", "external", lambda x: list(flash_reasons), lambda x: ("flash_attn", x)),
        Backend("torch", "torch", lambda x: [], lambda x: ("torch", x)),
    ]


def test_auto_takes_first_available_and_records_it():
    assert dispatch("toy", _backends(), 3) == ("triton", 3)
    assert pixelrefer_kernels.last_backend("toy") == "triton"
    assert dispatch("toy", _backends(triton_reasons=["no GPU"]), 4) == ("torch", 4)
    assert pixelrefer_kernels.last_backend("toy") == "torch"
    assert pixelrefer_kernels.last_backend() == "torch"


@pytest.mark.parametrize(
    "mode, expected",
    [pytest.param("torch", "torch", id="family-torch"), pytest.param("triton", "triton", id="family-triton"),
     pytest.param("flash_attn", "flash_attn", id="by-name")],
)
def test_forced_modes(mode, expected):
    with pixelrefer_kernels.force(mode):
        assert dispatch("toy", _backends(flash_reasons=()), 1)[0] == expected


def test_forced_path_that_cannot_run_lists_every_reason():
    with pixelrefer_kernels.force("triton"), pytest.raises(BackendUnavailableError) as info:
        dispatch("toy", _backends(triton_reasons=["tensors are on the CPU"]), 1)
    message = str(info.value)
    assert "tensors are on the CPU" in message and "flash-attn is not installed" in message and "torch" in message


def test_unknown_mode_is_an_error_not_auto(monkeypatch):
    monkeypatch.setenv("PIXELREFER_FAST_KERNELS", "tritonn")
    with pytest.raises(BackendUnavailableError, match="unknown kernel mode 'tritonn'"):
        dispatch("toy", _backends(), 1)


def test_env_switch_and_context_nesting(monkeypatch):
    monkeypatch.setenv("PIXELREFER_FAST_KERNELS", "torch")
    assert dispatch("toy", _backends(), 1)[0] == "torch"
    with pixelrefer_kernels.force("triton"):
        assert dispatch("toy", _backends(), 1)[0] == "triton"
        with pixelrefer_kernels.force("auto"):
            assert pixelrefer_kernels.current_mode() == "auto"
    assert pixelrefer_kernels.current_mode() == "torch"


def test_force_rejects_non_strings():
    with pytest.raises(TypeError, match="mode must be a non-empty string"):
        with pixelrefer_kernels.force(None):
            pass
