"""Energy per window by component, with how each figure was obtained, and the CO2 it stands for.

- GPU: NVML's cumulative energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ), read at window
  edges after a synchronise: measured. Windows under ~1 s are coarse (the counter updates every ~100 ms).
- CPU and RAM: codecarbon's `OfflineEmissionsTracker`, one task per window, tracking this process. Its
  CPU figure is measured only where it reads RAPL (or another power interface); otherwise it is a TDP x
  load estimate, and RAM is always a heuristic. The label says which mode codecarbon used.
- CO2 = kWh x the grid intensity of RunInfo.country from codecarbon's table (Our World in Data per
  country); "WLD" and countries it lacks use codecarbon's world average (475 g/kWh, IEA 2019).

Under torchrun every rank reads its own GPU, and the first rank of each node alone runs codecarbon, tracking the
whole machine: the run's figures are the sums over GPUs and nodes (each node's CPU and RAM counted once).

Energy is IT energy (PUE 1.0). A meter that fails leaves the run going: its component reads None with
`unavailable: <reason>` from then on, never 0. A CPU-only run labels the GPU `not_used`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml
from codecarbon import OfflineEmissionsTracker
from codecarbon.input import DataSource

from bench import distributed
from bench.collectors import WINDOW_KINDS, Collector, register_collector
from bench.errors import BenchError
from bench.hardware import synchronize
from bench.phases import Phase

COMPONENTS = ("cpu", "gpu", "ram")
_MILLIJOULES_PER_KWH = 3.6e9
# codecarbon CPU modes that read a power interface; the others (cpu_load, constant) are TDP estimates.
_MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics"}


@dataclass(frozen=True)
class CarbonIntensity:
    g_per_kwh: float
    source: str
    region: str


def carbon_intensity(country: str, world: dict | None = None) -> CarbonIntensity:
    """Grid intensity for an ISO3 country code from codecarbon's table. 'WLD' is the world average: the
    price table's [carbon] entry when given (`world`), else codecarbon's."""
    data = DataSource()
    if country.upper() == "WLD":
        if world:
            return CarbonIntensity(world["g_per_kwh"], world["source"], "world")
        average = data.get_carbon_intensity_per_source_data()
        return CarbonIntensity(average["world_average"], f"codecarbon world_average ({average['world_average_source']})",
                               "world")
    mixes = data.get_global_energy_mix_data()
    if country.upper() not in mixes:
        raise BenchError(f"unknown country {country!r}: give an ISO3 code such as USA, FRA, DEU, or WLD (world)")
    mix = mixes[country.upper()]
    return CarbonIntensity(mix["carbon_intensity"], f"codecarbon global_energy_mix ({mix['year']})",
                           mix["country_name"])


class NvmlEnergy:
    """Cumulative energy of one NVIDIA GPU since the driver loaded, in kWh."""

    def __init__(self, index: int):
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        entry = visible[index].strip() if index < len(visible) and visible[index].strip() else str(index)
        self._handle = (pynvml.nvmlDeviceGetHandleByIndex(int(entry)) if entry.isdigit()
                        else pynvml.nvmlDeviceGetHandleByUUID(entry))
        self.read_kwh()  # fails here, not mid-run, where the counter is unsupported

    def read_kwh(self) -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / _MILLIJOULES_PER_KWH


@dataclass
class _Component:
    """One meter's account. `method` is its label; kWh are by window kind, for the run and the phase."""

    method: str
    run_kwh: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WINDOW_KINDS, 0.0))
    phase_kwh: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WINDOW_KINDS, 0.0))
    failed_this_phase: bool = False

    @property
    def working(self) -> bool:
        return not self.method.startswith(("unavailable", "not_used"))

    def add(self, kind: str, kwh: float) -> None:
        self.run_kwh[kind] += kwh
        self.phase_kwh[kind] += kwh

    def fail(self, error: BaseException) -> None:
        self.method = f"unavailable: {type(error).__name__}: {error}"
        self.failed_this_phase = True

    def phase_value(self, kind: str) -> float | None:
        return self.phase_kwh[kind] if self.working and not self.failed_this_phase else None

    def run_value(self, kind: str) -> float | None:
        return self.run_kwh[kind] if self.working else None


def _codecarbon_labels(tracker: OfflineEmissionsTracker) -> tuple[str, str]:
    """(cpu, ram) labels from the mode codecarbon chose on this machine."""
    cpu_modes = [getattr(item, "_mode", None) for item in tracker._hardware if type(item).__name__ == "CPU"]
    if not cpu_modes:
        cpu = "unavailable: codecarbon found no CPU to track"
    elif cpu_modes[0] in _MEASURED_CPU_MODES:
        cpu = f"rapl (measured, codecarbon {cpu_modes[0]})"
    else:
        cpu = f"tdp_estimate (estimated, codecarbon {cpu_modes[0]})"
    return cpu, "ram_heuristic (estimated, codecarbon)"


@register_collector("energy")
class EnergyCollector(Collector):
    """kWh by component and window kind, labelled; `energy_kwh` is what training windows used."""

    order = 30

    def __init__(self, run):
        super().__init__(run)
        self.intensity = carbon_intensity(run.country, run.prices.get("carbon"))
        self.components = {name: _Component("not measured yet") for name in COMPONENTS}
        self._gpu: NvmlEnergy | None = None
        self._tracker: OfflineEmissionsTracker | None = None
        self._open_gpu()
        self._open_codecarbon()

    def _open_gpu(self) -> None:
        gpu = self.components["gpu"]
        if self.run.device.type != "cuda":
            gpu.method = "not_used (CPU run)"
            return
        try:
            self._gpu = NvmlEnergy(self.run.device.index or 0)
            gpu.method = "nvml_energy (measured)"
        except pynvml.NVMLError as error:
            gpu.fail(error)

    def _open_codecarbon(self) -> None:
        """Starting codecarbon detects the hardware (~2 s), so it happens once, here, outside any window."""
        world = distributed.world()
        if not world.node_leader:
            for name in ("cpu", "ram"):
                self.components[name].method = "not_used (measured by the node's first rank)"
            return
        logging.getLogger("codecarbon").setLevel(logging.CRITICAL)
        if self.run.run_dir is not None:
            os.makedirs(self.run.run_dir, exist_ok=True)
        try:
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.run.country.upper(), save_to_file=False, log_level="critical",
                output_dir=str(self.run.run_dir or os.getcwd()), allow_multiple_runs=True,
                tracking_mode="machine" if world.distributed else "process",
            )
            self._tracker.start_task("hardware-detection")
            if self._tracker.stop_task() is None:
                raise RuntimeError("codecarbon returned no measurement")
            self.components["cpu"].method, self.components["ram"].method = _codecarbon_labels(self._tracker)
        except Exception as error:  # noqa: BLE001 - codecarbon raises many types; none may stop a run
            self._tracker = None
            self._codecarbon_failed(error)

    def start_phase(self, phase: Phase, batch: dict, steps: int = 1) -> None:
        for component in self.components.values():
            component.phase_kwh = dict.fromkeys(WINDOW_KINDS, 0.0)
            component.failed_this_phase = False

    @contextlib.contextmanager
    def window(self, kind: str) -> Iterator[None]:
        synchronize(self.run.device)
        gpu_start = self._read_gpu()
        measuring = self._start_codecarbon(kind)
        try:
            yield
        finally:
            synchronize(self.run.device)
            task = self._stop_codecarbon() if measuring else None
            gpu_end = self._read_gpu()
            if task is not None:
                self.components["cpu"].add(kind, task.cpu_energy)
                self.components["ram"].add(kind, task.ram_energy)
            if gpu_start is not None and gpu_end is not None:
                self.components["gpu"].add(kind, gpu_end - gpu_start)

    def _read_gpu(self) -> float | None:
        if self._gpu is None or not self.components["gpu"].working:
            return None
        try:
            return self._gpu.read_kwh()
        except pynvml.NVMLError as error:
            self.components["gpu"].fail(error)
            return None

    def _codecarbon_failed(self, error: BaseException) -> None:
        self.components["cpu"].fail(error)
        self.components["ram"].fail(error)

    def _start_codecarbon(self, kind: str) -> bool:
        """Open a codecarbon task for the window; False where codecarbon is not (or no longer) measuring."""
        if self._tracker is None or not self.components["cpu"].working:
            return False
        try:
            self._tracker.start_task(kind)
        except Exception as error:  # noqa: BLE001 - a failing meter must not stop a run
            self._codecarbon_failed(error)
            return False
        return True

    def _stop_codecarbon(self):
        """The window's codecarbon measurement (an EmissionsData), or None where codecarbon failed."""
        try:
            task = self._tracker.stop_task()
        except Exception as error:  # noqa: BLE001 - a failing meter must not stop a run
            self._codecarbon_failed(error)
            return None
        if task is None:  # codecarbon logs its own failures and returns nothing
            self._codecarbon_failed(RuntimeError("codecarbon returned no measurement"))
        return task

    def _accounts(self, value_of) -> dict[str, tuple[str, dict[str, float | None]]]:
        """{component: (label, kWh by window kind)} from `value_of(component, kind)`, the phase's or the run's
        figures; under torchrun summed over the ranks that measure the component (None if one of them could not)."""
        local = {name: (c.method, {kind: value_of(c, kind) for kind in WINDOW_KINDS})
                 for name, c in self.components.items()}
        if not distributed.world().distributed:
            return local
        ranks = distributed.gather(local)
        accounts = {}
        for name in COMPONENTS:
            measuring = [rank[name] for rank in ranks if not rank[name][0].startswith("not_used")]
            if not measuring:
                accounts[name] = ranks[0][name]
                continue
            labels = " + ".join(dict.fromkeys(label for label, _ in measuring))
            kwh = {kind: None if any(values[kind] is None for _, values in measuring)
                   else sum(values[kind] for _, values in measuring) for kind in WINDOW_KINDS}
            accounts[name] = (f"{labels}, summed over {len(measuring)} rank{'s' if len(measuring) > 1 else ''}", kwh)
        return accounts

    def _columns(self, value_of) -> dict[str, Any]:
        """Energy columns from `value_of(component, kind)`: the phase's or the run's figures."""
        accounts = self._accounts(value_of)
        columns: dict[str, Any] = {}
        for name, (label, kwh) in accounts.items():
            columns[f"energy_{name}_kwh"] = kwh["train"]
            columns[f"energy_{name}_method"] = label
        in_use = {name: account for name, account in accounts.items() if not account[0].startswith("not_used")}
        for kind, column in (("train", "energy_kwh"), ("eval", "energy_eval_kwh"), ("overhead", "energy_overhead_kwh")):
            values = [kwh[kind] for _, kwh in in_use.values() if kwh[kind] is not None]
            columns[column] = sum(values) if values else None
        missing = [name for name, (_, kwh) in in_use.items() if kwh["train"] is None]
        if columns["energy_kwh"] is None:
            columns["energy_method"] = "unavailable"
        elif missing:
            columns["energy_method"] = f"partial: {', '.join(missing)} unavailable"
        else:
            columns["energy_method"] = "+".join(f"{name}:{label.split(' ')[0]}" for name, (label, _) in in_use.items())
        train = columns["energy_kwh"]
        columns["co2_kg"] = None if train is None else train * self.intensity.g_per_kwh / 1000
        columns["carbon_g_per_kwh"] = self.intensity.g_per_kwh
        columns["carbon_source"] = self.intensity.source
        columns["carbon_region"] = self.intensity.region
        return columns

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        columns = self._columns(_Component.run_value)
        return {key: columns[key] for key in ("energy_kwh", "energy_method", "co2_kg")}

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        return self._columns(_Component.phase_value)

    def state_dict(self) -> dict[str, Any]:
        """kWh so far by component and window kind (run and phase), and each meter's label."""
        return {name: {"method": c.method, "run_kwh": dict(c.run_kwh), "phase_kwh": dict(c.phase_kwh),
                       "failed_this_phase": c.failed_this_phase} for name, c in self.components.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The earlier sessions' kWh; a meter that had failed stays unavailable for the run (its totals miss
        what it did not measure)."""
        for name, saved in state.items():
            component = self.components.get(name)
            if component is None:
                continue
            component.run_kwh, component.phase_kwh = dict(saved["run_kwh"]), dict(saved["phase_kwh"])
            component.failed_this_phase = component.failed_this_phase or saved["failed_this_phase"]
            if not _Component(saved["method"]).working and component.working:
                component.method = saved["method"]

    def close(self) -> None:
        if self._gpu is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
