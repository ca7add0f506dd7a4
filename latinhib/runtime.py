"""The machine a job runs on: which device (``runtime.device``), which autocast dtype
(``runtime.amp``, by whether this CPU has AMX) and how many CPU threads the small ops of
steps 4-5 get. Facts about the runtime, not about the model or the method, so the API, the
folder job, ``preview`` and ``evaluate`` resolve them the same way.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from .config import ConfigError

__all__ = ["amp_dtype", "cpu_has_amx", "resolve_device", "single_thread"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device: {name!r} is not available on this machine (no CUDA device); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"runtime.device: {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles with bf16 (Xeon 4th generation and later).

    torch's own check where it has one (``torch.cpu._is_amx_tile_supported``), else the
    ``amx_tile`` and ``amx_bf16`` flags of ``/proc/cpuinfo``; False where neither says yes
    (macOS, Windows, older CPUs, AMD)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if check is not None:
        try:
            if not check():
                return False
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_tile" in flags and "amx_bf16" in flags


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Resolve ``runtime.amp`` to an autocast dtype: ``auto`` is bf16 on CUDA and on CPUs
    with AMX (:func:`cpu_has_amx`), float32 on other CPUs.

    On CPUs with AMX tiles bf16 pays off (a convolutional model pass runs several times
    faster) and does not cost mask quality: against exact masks its IoU equals float32's
    within noise, although a few mask pixels flip at the threshold's edge
    (docs/SPEED.md#amx-and-bf16). Without AMX, bf16 is emulated and slower, so ``auto``
    stays float32 there."""
    if amp == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_amx()):
            return torch.bfloat16
        return None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """On CPU, run the enclosed torch ops on one thread, then restore the count.

    Steps 4-5 (LoG on three small maps, scaling to 224, min-max, quantile) are many small
    ops: with two or more OpenMP threads each one pays a fork/join, which on busy cores
    costs more than the ops themselves (docs/SPEED.md#single-thread-mask-steps).
    Every op involved gives the same bits on any thread count. Elsewhere a no-op."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
