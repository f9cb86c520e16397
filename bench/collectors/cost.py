"""Dollars, derived from the device-hours and kWh that earlier collectors put in the row.

Two models, both reported, each with the price it used:
- cloud: device-hours x the on-demand $/device-hour of this device (a cloud bill already includes the
  data centre's overhead: never multiply it by PUE);
- owned hardware: kWh x PUE x $/kWh.
"""

from __future__ import annotations

import math
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

from bench.collectors import Collector, register_collector
from bench.errors import BenchError
from bench.hardware import device_model

CPU_PRICE_KEY = "cpu-core"
# --price NAME=VALUE names that are not devices: (table, field).
_SCALAR_PRICES = {"electricity": ("electricity", "usd_per_kwh"), "pue": ("pue", "value"),
                  "carbon": ("carbon", "g_per_kwh")}


def _number(value: Any, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= minimum:
        raise BenchError(f"price table: {where} must be a number above {minimum:g}, got {value!r}")
    return float(value)


def _validate(prices: dict, origin: str) -> None:
    devices = prices.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise BenchError(f"price table {origin}: no [devices.NAME] entries")
    for name, entry in devices.items():
        if not isinstance(entry, dict) or "source" not in entry:
            raise BenchError(f"price table {origin}: devices.{name} needs usd_per_hour and source")
        _number(entry.get("usd_per_hour"), f"devices.{name}.usd_per_hour")
    for table, field in _SCALAR_PRICES.values():
        if not isinstance(prices.get(table), dict):
            raise BenchError(f"price table {origin}: missing [{table}]")
        _number(prices[table].get(field), f"{table}.{field}", minimum=1.0 if table == "pue" else 0.0)


def load_prices(path: str | Path | None = None, overrides: dict[str, float] | None = None) -> dict:
    """The price table (bench/prices.toml, or `path`), with `overrides` ({"H100": 2.99, "pue": 1.1}) applied.
    A missing, unreadable or malformed file, or a bad override, is a BenchError."""
    origin = str(path) if path is not None else "bench/prices.toml"
    try:
        raw = Path(path).read_bytes() if path is not None else files("bench").joinpath("prices.toml").read_bytes()
    except OSError as error:
        raise BenchError(f"cannot read price file {origin}: {error.strerror or error}") from None
    if b"\0" in raw:
        raise BenchError(f"price file {origin} is binary (it contains NUL bytes), not a TOML text file")
    try:
        prices = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BenchError(f"price file {origin} is not UTF-8 text, so not a TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise BenchError(f"price file {origin} is not valid TOML: {error}") from None
    _validate(prices, origin)
    for name, value in (overrides or {}).items():
        if name in _SCALAR_PRICES:
            table, field = _SCALAR_PRICES[name]
            prices[table][field] = _number(value, f"--price {name}", minimum=1.0 if name == "pue" else 0.0)
            prices[table]["source"] = "user override (--price)"
        else:
            unit = prices["devices"].get(name, {}).get("unit", "device-hour")
            prices["devices"][name] = {"usd_per_hour": _number(value, f"--price {name}"), "unit": unit,
                                       "source": "user override (--price)"}
    return prices


@register_collector("cost")
class CostCollector(Collector):
    """Cloud and owned-hardware dollars from `device_hours` (clock) and `energy_kwh` (energy)."""

    order = 90

    def __init__(self, run):
        super().__init__(run)
        self.prices = run.prices or load_prices()
        key = CPU_PRICE_KEY if run.device.type != "cuda" else device_model(run.device)
        self._device_price = self.prices["devices"].get(key) if key else None
        if self._device_price is None:
            self._cloud_label = f"unavailable: no price for {key or 'this GPU'}; give --price NAME=USD_PER_HOUR"
        else:
            p = self._device_price
            self._cloud_label = (f"{key} ${p['usd_per_hour']:g}/{p.get('unit', 'device-hour')} "
                                 f"({p['source']}, {p.get('as_of', self.prices.get('as_of', 'undated'))})")
        electricity, pue = self.prices["electricity"], self.prices["pue"]
        self._energy_label = (f"${electricity['usd_per_kwh']:g}/kWh x PUE {pue['value']:g} "
                              f"({electricity['source']}; {pue['source']})")

    def _dollars(self, row: dict[str, Any]) -> dict[str, Any]:
        device_hours, kwh = row.get("device_hours"), row.get("energy_kwh")
        cloud = None if self._device_price is None or device_hours is None \
            else device_hours * self._device_price["usd_per_hour"]
        energy = None if kwh is None \
            else kwh * self.prices["pue"]["value"] * self.prices["electricity"]["usd_per_kwh"]
        return {"cost_cloud_usd": cloud, "cost_energy_usd": energy}

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._dollars(row)

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        return {**self._dollars(row), "cost_cloud_price": self._cloud_label, "cost_energy_price": self._energy_label}
