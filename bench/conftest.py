"""pytest-benchmark hooks: every saved result records the machine (``bench/machine.py``)."""

from __future__ import annotations

from bench.machine import machine_info as collect_machine_info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["pixelrefer_fast"] = collect_machine_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["pixelrefer_fast_machine"] = collect_machine_info()
