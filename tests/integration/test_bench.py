"""scripts/bench/bench_methods.py on the tiny SD 1.5-shaped pipeline on the CPU: every job runs
one iteration through the real engines and the JSON and markdown reports are written."""

from __future__ import annotations

import json

import pytest

from tests.scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench():
    return load_script("bench/bench_methods.py")


def test_bench_tiny_cpu_writes_every_key(tmp_path):
    bench = _bench()
    results = bench.main(["--tiny", "--device", "cpu", "--iters", "1", "--warmup", "0", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert not [k for k in data if k.endswith("_error")], data.get("tracebacks")
    for prefix in ("esd_x", "masks5", "masks20", "dmd2"):
        assert data[f"{prefix}_s_per_it"] > 0
        assert f"{prefix}_peak_gib" in data and data[f"{prefix}_peak_gib"] is None  # no counter on the CPU
    assert data["sample_images_per_s"] > 0
    assert data["gpu"] == "cpu" and data["precision"] == "fp32"
    assert data["details"]["esd"]["pool_refills"] == 1 and data["details"]["esd"]["pool_refills_timed"] == 1
    assert data["details"]["dmd2"]["gradient_checkpointing"] and data["details"]["dmd2"]["generator_updates_timed"] == 1
    table = (tmp_path / "cpu.md").read_text()
    assert table.startswith("| job | ours | reference (H100) | target | met? |")
    for row in ("esd_x s/it", "masks5 peak", "masks20 s/it", "dmd2 peak", "sample 50 steps"):
        assert f"| {row} |" in table


def test_bench_rejects_unknown_jobs(tmp_path):
    with pytest.raises(ValueError, match="--jobs"):
        _bench().main(["--tiny", "--jobs", "esd,nope", "--out-dir", str(tmp_path)])


def test_a_failed_job_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    bench = _bench()
    load = bench.load_engine

    def failing_load(args, folder, job):
        if job == "masks5":
            raise RuntimeError("boom")
        return load(args, folder, job)

    monkeypatch.setattr(bench, "load_engine", failing_load)
    results = bench.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--jobs",
            "masks5,sample",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert results["masks5_error"] == "RuntimeError: boom" and "masks5_s_per_it" not in results
    assert results["sample_images_per_s"] > 0
    assert "masks5_error: RuntimeError: boom" in (tmp_path / "cpu.md").read_text()
