"""Device choice: no silent fallback from a requested accelerator to the CPU."""

from __future__ import annotations

import pytest
import torch

from bids_phydiff.model import autocast, resolve_device


def test_auto_picks_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_requested_cuda_that_is_not_there_raises():
    name = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(RuntimeError, match="requested"):
        resolve_device(name)


def test_nonsense_devices_are_refused():
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu-please")


def test_autocast_bf16_changes_matmul_precision_and_fp32_does_not():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast(torch.device("cpu"), "fp8")
