"""What machine a run used: a fingerprint for the manifest, the accelerator's model name, its peak FLOP/s
(for MFU), and the two device chores every collector shares (synchronising, leaving the RNG untouched)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import pynvml
import torch

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets (SXM parts unless named). float32 is the
# non-tensor-core figure: PyTorch trains fp32 without TF32 unless told otherwise.
PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100-PCIE": {torch.bfloat16: 756e12, torch.float16: 756e12, torch.float32: 51e12},
    "A100-80GB": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "A100-40GB": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
    "T4": {torch.float16: 65e12, torch.float32: 8.1e12},
}

# (all substrings of the CUDA device name, model key); the first match wins, so specific names come first.
_GPU_NAMES: list[tuple[tuple[str, ...], str]] = [
    (("H200",), "H200"),
    (("H100", "PCIE"), "H100-PCIE"),
    (("H100",), "H100"),
    (("A100", "80GB"), "A100-80GB"),
    (("A100",), "A100-40GB"),
    (("V100",), "V100"),
    (("T4",), "T4"),
]


def gpu_model(device_name: str) -> str | None:
    """The table key (`H100`, `A100-80GB`, ...) of a CUDA device name such as 'NVIDIA H100 80GB HBM3'."""
    upper = device_name.upper()
    for parts, key in _GPU_NAMES:
        if all(part in upper for part in parts):
            return key
    return None


def device_model(device: torch.device) -> str | None:
    """The model key of the accelerator `device` is on (None on CPU, or for a GPU the tables do not know)."""
    if device.type != "cuda":
        return None
    return gpu_model(torch.cuda.get_device_name(device))


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of `device` in `dtype`, or None when unknown (CPUs, unlisted GPUs or dtypes)."""
    model = device_model(device)
    return PEAK_FLOPS.get(model, {}).get(dtype) if model else None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock or energy reading covers what ran before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Run measuring passes without moving the RNG streams training draws from."""
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        yield


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version, or None where NVML cannot be read (the fingerprint then lacks it)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()


def hardware_fingerprint() -> dict:
    """CPU, GPU and software versions of this machine, for the manifest and for baseline comparisons."""
    fingerprint = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "codecarbon": _package_version("codecarbon"),
        "fvcore": _package_version("fvcore"),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_model": None,
        "gpu_driver": None,
        "cuda": torch.version.cuda,
    }
    if fingerprint["gpu_count"]:
        fingerprint["gpu_model"] = torch.cuda.get_device_name(0)
        fingerprint["gpu_driver"] = _nvidia_driver()
    return fingerprint
