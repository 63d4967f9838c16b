"""`bench/erft_memory_estimate.py`: the fake-tensor estimate of an ERFT step's memory and FLOPs.

What is checked: the byte counter against sizes worked out by hand; on the tiny transformer, the estimate's fake
step holds at its peak exactly the bytes a real step holds (the same ops, the same saved tensors); its FLOPs add
up as forward + recomputed forward + backward; the script prints its figures and writes them.
"""

import contextlib
import json
import runpy
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from torch._subclasses.fake_tensor import FakeTensorMode


@pytest.fixture(scope="module")
def estimate(bench_folder):
    """The script's functions; it imports its sibling `erft_step` as a script run from bench/ would."""
    try:
        yield runpy.run_path(str(bench_folder / "erft_memory_estimate.py"))
    finally:
        AcceleratorState._reset_state()  # its bf16 Accelerator must not outlive these tests


def test_byte_counter_counts_storages_once_and_forgets_freed_ones(estimate):
    tracker = estimate["LiveTensorBytes"]()
    with tracker:
        ones = torch.ones(1000)  # 4000 bytes
        rows = ones.view(10, 100)  # the same storage: not counted again
        doubled = rows * 2  # 4000 more
        del doubled
    assert tracker.now == 4000 and tracker.peak == 8000
    tracker.add(torch.zeros(10, dtype=torch.bfloat16))  # a temporary: gone as soon as it is counted
    assert tracker.now == 4000 and tracker.peak == 8000


def peak_of_a_step(estimate, config: dict, fake_mode: FakeTensorMode | None) -> int:
    model = estimate["real_transformer"](torch.device("meta" if fake_mode else "cpu"), config)
    with fake_mode or contextlib.nullcontext():
        inputs = estimate["step_inputs"](model, 9, 32, 32, torch.device("cpu"), torch.bfloat16)
    step, _ = estimate["lora_training_step"](model, inputs, 4, True, fake_mode)
    return estimate["peak_step_bytes"](step, inputs, fake_mode)


def test_fake_step_peaks_at_the_bytes_a_real_step_holds(estimate):
    tiny_config = estimate["tiny_transformer_config"]()
    real = peak_of_a_step(estimate, tiny_config, None)
    fake = peak_of_a_step(estimate, tiny_config, FakeTensorMode(allow_non_fake_inputs=True))
    resident = sum(
        p.numel() * p.element_size()
        for p in estimate["real_transformer"](torch.device("meta"), tiny_config).parameters()
    )
    assert real == fake
    assert real > resident  # activations and AdamW's moments on top of the weights


def test_script_prints_and_writes_its_figures(estimate, tmp_path, monkeypatch, capsys):
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["erft_memory_estimate.py", "--tiny", "--out", str(out)])
    estimate["main"]()
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert "9×32×32, 12 tokens, rank 4" in printed and "fits in 78 GiB" in printed
    assert (
        figures["command"] == "python bench/erft_memory_estimate.py --tiny --frames 9 --height 32 --width 32 --rank 4"
    )
    # With checkpointing the forward runs twice: the counted (hardware) FLOPs are the model's plus one forward.
    assert figures["step_flop_hardware"] == figures["step_flop_model"] + figures["forward_flop"]
    assert figures["step_flop_model"] > figures["forward_flop"]


def test_real_size_forward_flops_match_the_analytical_count(estimate):
    """`reference/anchors.md` §B.1 works out 1.686 PFLOP for a Wan2.1-I2V-14B forward at 81×480×832 (linear layers
    0.786, attention 0.900) and +1.98% for SVI's unmerged rank-128 LoRA. Counting on fake tensors must agree; it
    would miss the 0.900 of attention without the CPU attention formulas."""
    model = estimate["real_transformer"](torch.device("meta"))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        inputs = estimate["step_inputs"](model, 81, 480, 832, torch.device("cpu"), torch.bfloat16)
    estimate["lora_training_step"](model, inputs, 128, True, fake_mode)  # SVI's LoRA on the model
    with fake_mode:
        counted = estimate["forward_flops"](model, inputs, torch.bfloat16)
    assert counted / 1e15 == pytest.approx(1.686 * 1.0198, rel=5e-3)


def test_a_step_that_does_not_fit_says_what_would_free_memory(estimate, monkeypatch, capsys):
    argv = ["erft_memory_estimate.py", "--tiny", "--no-checkpointing", "--gpu-gib", "1e-6"]
    monkeypatch.setattr(sys, "argv", argv)
    estimate["main"]()
    verdict = capsys.readouterr().out.splitlines()[-1]
    assert verdict.startswith("does not fit in 0 GiB by")
    assert "gradient checkpointing (off here)" in verdict and "ZeRO-2" in verdict and "fewer frames" in verdict
