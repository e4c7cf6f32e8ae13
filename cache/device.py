"""Which torch device a stage runs on: the one choice extraction and the student share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from egodistill.cache.errors import DeviceError

if TYPE_CHECKING:
    import torch


def pick_device(name: str) -> torch.device:
    """"auto": cuda when torch sees a GPU, else cpu; "cpu", "cuda" or "cuda:N" as asked, when present."""
    import torch  # heavy: only the stages that compute pay for it

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(name)
