"""Which numeric precision a run trains in, decided once from the device (and never silently wrong).

`auto` takes the launcher's precision under `accelerate launch` (its `--mixed_precision` or config
file, `no` included: accelerate passes it as ACCELERATE_MIXED_PRECISION, and says `no` when neither
names one, so a user who configured fp32 gets fp32). Run without a launcher, `auto` picks bf16 where the
hardware runs it natively (CUDA GPUs with bf16, CPUs with AVX-512-BF16 or AMX) and fp32 elsewhere: on an
AVX2-only CPU, bf16 convolutions fall back to a reference kernel about 50x slower than fp32. fp16
autocast is refused on CPUs rather than silently run in fp32.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from bacon_zoo.errors import UserError


def cpu_has_native_bf16() -> bool:
    """AVX-512-BF16 or AMX, as torch's own CPU feature checks report them."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def device_supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(requested: str | None, device: torch.device) -> tuple[str, str]:
    """(accelerate's mixed_precision value, a one-line reason) for a requested precision.

    `None` defers to `accelerate launch --mixed_precision` (ACCELERATE_MIXED_PRECISION), fp32 without
    a launcher; `auto` takes the launcher's value too (`no` included), and without one picks from the
    hardware. An explicit no/bf16/fp16 wins over the launcher.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() or None
    by = "requested"
    if requested is None or (requested == "auto" and launcher is not None):
        requested, by = launcher or "no", "from accelerate launch" if launcher else "requested"
    if requested == "auto":
        if device_supports_bf16(device):
            return "bf16", f"auto: {device_name(device)} runs bf16 natively"
        return "no", f"auto: fp32, {device_name(device)} has no native bf16"
    if requested == "fp16" and device.type == "cpu":
        raise UserError(
            "fp16 autocast does not run on a CPU (it would silently train in fp32); use "
            "--mixed-precision bf16, auto or no"
        )
    if requested == "bf16" and not device_supports_bf16(device):
        note = f"bf16 {by} (not native here: expect it to be much slower than fp32)"
        return "bf16", note
    return requested, f"{'fp32' if requested == 'no' else requested} {by}"


def device_name(device: torch.device) -> str:
    """A human name for the device a run used: the GPU's, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}"
