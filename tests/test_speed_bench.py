"""`bench/speed.py`: its analytic FLOP count, and its `--tiny` run writing every figure the issue asks for."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench(bench_folder):
    return runpy.run_path(str(bench_folder / "speed.py"))


def test_analytic_flops_of_a_real_forward_are_the_reference_figure(bench):
    """Wan2.1-I2V-14B at 81×480×832 with 257 CLIP tokens: 1.686 PFLOP (anchors.md B.1)."""
    from erft_step import WAN21_I2V_14B  # (bench/ is on the import path in this module)

    flops = bench["analytic_forward_flops"](WAN21_I2V_14B, 81, 480, 832, 257)
    assert flops == pytest.approx(1.686e15, rel=1e-3)


def test_tiny_run_writes_the_figures(tmp_path):
    """The eager compile backend keeps this to seconds (inductor compiles for about a minute on 2 cores)."""
    command = [sys.executable, str(BENCH / "speed.py"), "--tiny", "--compile-backend", "eager", "--threads", "1"]
    subprocess.run([*command, "--out-dir", str(tmp_path)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    (written,) = tmp_path.glob("speed-cpu-tiny-*.json")
    figures = json.loads(written.read_text())
    assert figures["device"] == "cpu-tiny" and figures["command"].startswith("python bench/speed.py --tiny")
    forward = figures["dit_forward"]
    assert {"ours_s", "stock_s", "ours_mfu", "stock_mfu", "max_abs_diff"} <= set(forward)
    assert forward["max_abs_diff"] <= 1e-5 and forward["ours_mfu"] is None  # no peak FLOPs are assumed for a CPU
    assert {"ours", "stock", "extrapolated"} <= set(figures["clip_50_steps_s"])
    assert figures["peak_gib"] == {"ours": None, "stock": None}
    stages = figures["clip_stages"]["ours"]
    assert {"text", "clip_image", "vae_encode", "dit", "vae_decode", "other", "total"} <= set(stages)
    levers = figures["levers"]
    assert levers["batch_cfg"]["max_abs_diff"] <= 1e-5
    assert 0 < levers["step_caches"]["first_block"]["relative_l2_of_latents"] < 0.05
    modes = levers["memory_modes"]
    assert 0.99 < modes["fp8_storage"]["cosine"] < 1 and modes["fp8_storage_group_offload"]["cosine"] > 0.99
