"""Where the model runs, with which precision, and the last preprocessing step beside it.

CUDA when it is available and the config asks for a GPU, else CPU. Mixed precision
(bfloat16 autocast) only on CUDA: on CPU everything stays float32, so CPU runs are exact.
"""
from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def select_device(num_gpus: float) -> torch.device:
    """cuda when a GPU is both requested (num_gpus > 0) and visible; cpu otherwise."""
    if num_gpus > 0:
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("num_gpus=%s but no CUDA device is visible: running on the CPU", num_gpus)
    return torch.device("cpu")


def best_device() -> torch.device:
    """cuda when a GPU is visible, else cpu: training uses whatever the machine has."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype: bfloat16 on CUDA when amp is on, None (plain float32) elsewhere."""
    return torch.bfloat16 if amp and device.type == "cuda" else None


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass; a no-op on CPU or with amp off."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resize_on_device(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, s, s) frames to (N, 1, size, size): area averaging down, bilinear (as cv2 INTER_LINEAR) up."""
    side = x.shape[-1]
    if side == size:
        return x
    if side > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def frames_to_device(pixels: np.ndarray, device: torch.device, size: int) -> torch.Tensor:
    """Flat or square float frames in [0, 1] to an (N, 1, size, size) float32 tensor on device.

    The final preprocessing (clip to [0, 1], resize to the model's side) runs on the device,
    next to the model, so a GPU actor does it on the GPU.
    """
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    n = arr.shape[0]
    side = math.isqrt(arr[0].size) if n else size
    if n and side * side != arr[0].size:
        raise ValueError(f"frames of {arr[0].size} pixels are not square")
    x = torch.from_numpy(arr.reshape(n, 1, side, side)).to(device, non_blocking=True)
    return resize_on_device(x.clamp(0.0, 1.0), size)
