"""Process set-up shared by notebooks and scripts: device choice, thread count, seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; "cpu", "cuda", "cuda:1" are taken as given (CUDA checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def set_threads(threads: int) -> None:
    """torch intra-op threads (and the OpenMP/BLAS hint for child processes). Keep workers x threads <= cores."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU generator seeded the same for explicit draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
