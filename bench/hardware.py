"""What machine a run used: a fingerprint for the manifest, the accelerator's model name, its peak FLOP/s
(for MFU), and the two device chores every collector shares (synchronising, leaving the RNG untouched)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import pynvml
import torch

TF32 = "tf32"
"""float32 matrix products on tensor cores (`--dtype tf32`): not a torch dtype, but a peak of its own."""

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets (SXM parts unless named), by the math the matrix
# products run in. float32 is the non-tensor-core figure (`--dtype fp32` turns TF32 off); TF32 is `--dtype tf32`.
PEAK_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, TF32: 494.5e12, torch.float32: 67e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, TF32: 494.5e12, torch.float32: 67e12},
    "H100-PCIE": {torch.bfloat16: 756e12, torch.float16: 756e12, TF32: 378e12, torch.float32: 51e12},
    "A100-80GB": {torch.bfloat16: 312e12, torch.float16: 312e12, TF32: 156e12, torch.float32: 19.5e12},
    "A100-40GB": {torch.bfloat16: 312e12, torch.float16: 312e12, TF32: 156e12, torch.float32: 19.5e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
    "T4": {torch.float16: 65e12, torch.float32: 8.1e12},
}
PEAK_SOURCE = "dense, NVIDIA datasheet"
MATH_NAMES: dict[torch.dtype | str, str] = {torch.bfloat16: "bf16", torch.float16: "fp16", TF32: "tf32",
                                            torch.float32: "fp32"}

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


def peak_flops(device: torch.device, dtype: torch.dtype | str) -> float | None:
    """Dense peak FLOP/s of `device` in `dtype` (a torch dtype or TF32), or None when unknown (CPUs, unlisted GPUs
    or dtypes)."""
    model = device_model(device)
    return PEAK_FLOPS.get(model, {}).get(dtype) if model else None


def set_matmul_precision(device: torch.device, tf32: bool) -> None:
    """On CUDA, let float32 matrix products (and cuDNN) use TF32 tensor cores or not; nothing elsewhere, so that a
    CPU run is untouched."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def run_math(device: torch.device) -> torch.dtype | str:
    """The math the loop's matrix products run in, read where the loop's autocast is on (a collector's
    `start_phase`): the autocast dtype, else TF32 where CUDA allows it, else float32."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return TF32
    return torch.float32


def math_name(device: torch.device, autocast_dtype: torch.dtype | None) -> str:
    """The name (bf16, tf32, fp32, ...) of the math a loop with `autocast_dtype` runs its matrix products in on
    `device`, as the CUDA TF32 setting now stands."""
    if autocast_dtype is not None:
        return MATH_NAMES.get(autocast_dtype, str(autocast_dtype))
    return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


CPU_PEAK_SIZE, CPU_PEAK_REPEATS = 768, 5
CPU_PEAK_AGAIN_SECONDS = 0.5
"""How long a CPU peak is measured again for (best over every product in that time) after an MFU above 100%
showed the first one too low. On a 2-core VM with one core taken by other work, a 768 torch.mm takes 8-16 ms
(its second thread waits for the scheduler's 4 ms tick) against 2.1 ms quiet: best-of-5 measured 114 GFLOP/s
against 440. Runs of 60 products caught the quiet time in 4 of 4 at one moment; 0.25 s runs, in 0 of 18 at a busier
one (then the MFU stays refused)."""
ABOVE_PEAK = "unreliable: above the peak"
"""How an MFU above 100% is labelled: refused as a measurement (the peak was measured on a busy machine, too low, or
the FLOPs are overcounted), never written as a number."""
_CPU_PEAKS: dict[tuple[torch.dtype, int], tuple[float, int]] = {}
"""(dtype, threads) -> (best FLOP/s measured in this process, how many times it was measured)."""


def _cpu_matmul_flops(dtype: torch.dtype, seconds: float = 0.0) -> float:
    """Best FLOP/s of CPU_PEAK_REPEATS square torch.mm's, and of every further one in `seconds`."""
    left = torch.ones(CPU_PEAK_SIZE, CPU_PEAK_SIZE, dtype=dtype)  # no random numbers: training's RNG is not touched
    right = torch.ones(CPU_PEAK_SIZE, CPU_PEAK_SIZE, dtype=dtype)
    torch.mm(left, right)  # warm-up
    best, repeats, started = math.inf, 0, time.perf_counter()
    while repeats < CPU_PEAK_REPEATS or time.perf_counter() - started < seconds:
        start = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - start)
        repeats += 1
    return 2 * CPU_PEAK_SIZE**3 / best


def measured_cpu_peak(dtype: torch.dtype = torch.float32, again: bool = False) -> tuple[float, str]:
    """(FLOP/s, how measured) of this process's CPU: the best of a few square `torch.mm`s on every thread torch
    uses, measured once per process (a fraction of a second). A measured peak, so too low on a busy machine:
    `again` measures it once more, for CPU_PEAK_AGAIN_SECONDS, and keeps the better of the two (other work only
    ever slows a product down)."""
    threads = torch.get_num_threads()
    key = (dtype, threads)
    if again or key not in _CPU_PEAKS:
        best, times = _CPU_PEAKS.get(key, (0.0, 0))
        _CPU_PEAKS[key] = (max(best, _cpu_matmul_flops(dtype, CPU_PEAK_AGAIN_SECONDS if again else 0.0)), times + 1)
    peak, times = _CPU_PEAKS[key]
    name = MATH_NAMES.get(dtype, str(dtype))
    return peak, (f"measured matmul peak: {name} {CPU_PEAK_SIZE}x{CPU_PEAK_SIZE} torch.mm, {threads} "
                  f"thread{'s' if threads > 1 else ''}, best of {CPU_PEAK_REPEATS}"
                  + (f", measured again for {CPU_PEAK_AGAIN_SECONDS:g} s after an MFU above 100%" if times > 1 else ""))


def resolve_peak(device: torch.device, dtype: torch.dtype | str, again: bool = False) -> tuple[float | None, str]:
    """(the peak FLOP/s one process gets from `device`, its source) for MFU: the table's for a known GPU, a measured
    matmul peak on a CPU (measured `again` after an MFU above 100%), else (None, "unavailable: <why>")."""
    name = MATH_NAMES.get(dtype, str(dtype))
    if device.type == "cpu":
        if dtype not in (torch.float32, torch.bfloat16):
            return None, f"unavailable: no CPU peak measured for {name}"
        return measured_cpu_peak(dtype, again)
    if device.type != "cuda":
        return None, f"unavailable: {device.type} not in the peak table"
    model = device_model(device)
    if model is None:
        return None, f"unavailable: {torch.cuda.get_device_name(device)} not in the peak table"
    peak = PEAK_FLOPS[model].get(dtype)
    if peak is None:
        return None, f"unavailable: {model} has no {name} entry in the peak table"
    return peak, f"{model} {name} {PEAK_SOURCE}"


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
