import pytest
import torch

from bench.collectors import RunInfo, cost
from bench.collectors.cost import CostCollector, load_prices
from bench.errors import BenchError
from bench.hardware import PEAK_FLOPS, gpu_model, hardware_fingerprint, peak_flops

EXPECTED_DEVICES = {"H100", "A100-80GB", "A100-40GB", "V100", "T4", "cpu-core"}


def test_default_table_is_dated_and_sourced():
    prices = load_prices()
    assert EXPECTED_DEVICES <= set(prices["devices"])
    assert prices["as_of"]
    for entry in [*prices["devices"].values(), prices["electricity"], prices["pue"], prices["carbon"]]:
        assert entry["source"] and entry["as_of"]


def test_overrides_change_one_entry_and_say_so():
    prices = load_prices(overrides={"H100": 2.0, "H200": 3.5, "pue": 1.1, "electricity": 0.2})
    assert prices["devices"]["H100"]["usd_per_hour"] == 2.0
    assert prices["devices"]["H100"]["source"] == "user override (--price)"
    assert prices["devices"]["H200"]["usd_per_hour"] == 3.5
    assert prices["pue"]["value"] == 1.1 and prices["electricity"]["usd_per_kwh"] == 0.2
    assert prices["devices"]["T4"] == load_prices()["devices"]["T4"]


@pytest.mark.parametrize("override", [{"H100": -1.0}, {"T4": float("nan")}, {"pue": 0.9}, {"electricity": 0}])
def test_bad_overrides_are_bench_errors(override):
    with pytest.raises(BenchError):
        load_prices(overrides=override)


def test_price_file_errors(tmp_path):
    with pytest.raises(BenchError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")
    corrupt = tmp_path / "corrupt.toml"
    corrupt.write_text("[devices.H100\nusd_per_hour = ")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_prices(corrupt)
    no_pue = tmp_path / "no_pue.toml"
    no_pue.write_text('[devices.T4]\nusd_per_hour = 0.5\nsource = "x"\n[electricity]\nusd_per_kwh = 0.1\n'
                      '[carbon]\ng_per_kwh = 400\n')
    with pytest.raises(BenchError, match=r"missing \[pue\]"):
        load_prices(no_pue)
    negative = tmp_path / "negative.toml"
    negative.write_text(no_pue.read_text().replace("0.5", "-0.5") + '[pue]\nvalue = 1.2\nsource = "x"\n')
    with pytest.raises(BenchError, match="devices.T4.usd_per_hour"):
        load_prices(negative)


def test_cpu_cost_arithmetic(tmp_path):
    prices = load_prices(overrides={"cpu-core": 0.05, "pue": 1.5, "electricity": 0.2})
    collector = CostCollector(RunInfo(torch.device("cpu"), tmp_path, prices))
    row = collector.end_phase(100, {"device_hours": 2.0, "energy_kwh": 3.0})
    assert row["cost_cloud_usd"] == pytest.approx(2.0 * 0.05)  # no PUE on a cloud bill
    assert row["cost_energy_usd"] == pytest.approx(3.0 * 1.5 * 0.2)
    assert row["cost_cloud_price"].startswith("cpu-core $0.05/vCPU-hour")
    assert "PUE 1.5" in row["cost_energy_price"]
    assert collector.snapshot({"device_hours": 4.0, "energy_kwh": None}) == {
        "cost_cloud_usd": pytest.approx(0.2), "cost_energy_usd": None}


def test_gpu_price_follows_the_device_model(monkeypatch, tmp_path):
    monkeypatch.setattr(cost, "device_model", lambda device: "H100")
    collector = CostCollector(RunInfo(torch.device("cuda", 0), tmp_path, load_prices(overrides={"H100": 2.5})))
    assert collector.end_phase(1, {"device_hours": 4.0, "energy_kwh": 1.0})["cost_cloud_usd"] == pytest.approx(10.0)
    monkeypatch.setattr(cost, "device_model", lambda device: None)
    unknown = CostCollector(RunInfo(torch.device("cuda", 0), tmp_path, load_prices()))
    row = unknown.end_phase(1, {"device_hours": 4.0, "energy_kwh": 1.0})
    assert row["cost_cloud_usd"] is None and row["cost_cloud_price"].startswith("unavailable")


def test_gpu_names_map_to_table_keys_and_the_fingerprint_is_complete():
    assert gpu_model("NVIDIA H100 80GB HBM3") == "H100"
    assert gpu_model("NVIDIA H100 PCIe") == "H100-PCIE"
    assert gpu_model("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert gpu_model("NVIDIA A100-PCIE-40GB") == "A100-40GB"
    assert gpu_model("Tesla T4") == "T4"
    assert gpu_model("NVIDIA GeForce RTX 4090") is None
    fingerprint = hardware_fingerprint()
    assert fingerprint["cpu_model"] and fingerprint["cpu_cores"] >= 1
    assert fingerprint["torch"] == torch.__version__ and fingerprint["codecarbon"]


def test_peak_flops_come_from_the_one_table(monkeypatch):
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda", 0), torch.bfloat16) == PEAK_FLOPS["H100"][torch.bfloat16]
    assert peak_flops(torch.device("cuda", 0), torch.float64) is None
