"""Process set-up shared by notebooks and scripts: device choice, mixed precision, thread count, seeds."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterable, Literal

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


AmpSetting = Literal["auto", "off", "bf16", "fp16"]
AmpChoice = Literal["off", "bf16", "fp16"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs that compute bf16 natively (AVX-512-BF16 dot products, AMX tiles)."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True on CPUs with native bf16 compute (AVX-512-BF16 or AMX): the flags given, else this CPU's, read from
    /proc/cpuinfo and from torch's own CPU probe (which also covers machines without /proc)."""
    if flags is not None:
        return bool(set(flags) & set(NATIVE_BF16_FLAGS))
    if set(cpu_flags()) & set(NATIVE_BF16_FLAGS):
        return True
    probe = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(p()) for p in probe if p is not None)


def resolve_amp(setting: str, device: torch.device, flags: Iterable[str] | None = None) -> AmpChoice:
    """The autocast precision to use on ``device``.

    "auto": on CUDA bf16 where the GPU supports it, else fp16 (with a GradScaler in training); on a CPU bf16 where it
    has native bf16 (``cpu_has_native_bf16``: measured 1.5x faster training there, docs/results/speed.md), else "off"
    (fp32: bf16 autocast was 7-140x *slower* on an AVX-512 CPU without BF16). "off", "bf16", "fp16" are taken as given;
    fp16 needs CUDA.
    """
    if setting not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {setting!r}")
    if setting == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use 'bf16' or 'auto' on the CPU")
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16(flags) else "off"
    return "off"


def amp_dtype(choice: str) -> torch.dtype | None:
    """torch dtype of an amp choice ("off" -> None)."""
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def describe_cpu() -> str:
    """One line naming this CPU and its bf16 capability, for logs and speed figures."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", *NATIVE_BF16_FLAGS, "amx_tile") if f in flags]
    return f"{name}, {os.cpu_count()} logical CPUs, flags: {' '.join(simd) or 'none of avx2/avx512/bf16/amx'}"
