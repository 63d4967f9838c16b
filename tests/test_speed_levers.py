"""The engine's speed levers on a tiny Wan2.1 model: the same-output ones match the default path within fp32
rounding, the output-changing ones differ but stay close, and the identity (clip keys, manifest) says which is which.

Films here are Pro (latent chaining), so a rounding difference is carried to the next clip as it is, not through a
uint8 truncation that could turn 1e-7 into a grey level. Tolerances are on the float32 latents (values of order 1).
"""

import pytest
import torch
from diffusers import WanImageToVideoPipeline
from torch._dynamo.testing import CompileCounter

from pipeline.assemble.film import _engine_identity
from pipeline.request import FilmRequest
from pipeline.synthesize import EngineSpec
from svi_model.chain import FilmRenderer
from svi_model.levers import apply_levers
from svi_model.loading import load_wan_pipeline
from svi_model.modes import mode_settings
from svi_model.sampler import ClipSampler
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.tiny import tiny_components

PROMPTS = ["a red ball rolls across the grass", "a dog runs on the beach"]
SAME = 1e-5  # max |Δ| of latents for a same-output lever (measured: batch_cfg 2.8e-6, math attention 3.6e-6)


def tiny_sampler(batch_cfg: bool = False, **levers) -> ClipSampler:
    pipe = WanImageToVideoPipeline(**tiny_components() | {"scheduler": SVIFlowMatchScheduler()})
    pipe.set_progress_bar_config(disable=True)
    apply_levers(pipe.transformer, **levers)
    return ClipSampler(pipe, batch_cfg=batch_cfg)


def pro_film(sampler: ClipSampler, reference: torch.Tensor, clips: int = 2, steps: int = 4) -> torch.Tensor:
    """The latents `[clips, 16, T, h, w]` of a guided (CFG 5) Pro film of 9-frame clips."""
    renderer = FilmRenderer(sampler, mode_settings("pro", num_frames=9, steps=steps), reference, PROMPTS)
    return torch.stack([output.latents for _, output, _ in renderer.clips(clips)])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def default_film(reference) -> torch.Tensor:
    return pro_film(tiny_sampler(), reference)


# ---- same output ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lever",
    [dict(batch_cfg=True), dict(attention_backend="_native_math")],
    ids=["batch_cfg", "math-attention"],
)
def test_same_output_lever_matches_the_default_path(lever, reference, default_film):
    assert (pro_film(tiny_sampler(**lever), reference) - default_film).abs().max().item() <= SAME


def test_native_attention_is_the_default_exactly(reference, default_film):
    assert torch.equal(pro_film(tiny_sampler(attention_backend="native"), reference), default_film)


def test_compiled_blocks_trace_once_for_every_block_step_and_clip(reference, default_film):
    """One graph of `WanTransformerBlock` (fullgraph: a graph break would raise) serves both blocks, cond and
    uncond, every step and both clips: no recompile after the first forward. A counting backend stands in for
    inductor, whose code generation takes ~40 s on 2 cores (`bench/speed.py --tiny` runs the real one)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    renderer = FilmRenderer(
        tiny_sampler(compile=True, compile_backend=counter),
        mode_settings("pro", num_frames=9, steps=4),
        reference,
        PROMPTS,
    )
    latents, graphs = [], []
    for _, output, _ in renderer.clips(2):
        latents.append(output.latents)
        graphs.append(counter.frame_count)
    torch._dynamo.reset()
    assert graphs == [1, 1]
    assert (torch.stack(latents) - default_film).abs().max().item() <= SAME


def test_compile_traces_around_a_step_caches_hooks(reference):
    """A step cache decides on the host (torch.compiler.disable): with one, the blocks compile in pieces (no
    fullgraph) and the clip is the one the cache makes uncompiled."""
    torch._dynamo.reset()
    compiled = tiny_sampler(step_cache="first_block", compile=True, compile_backend=CompileCounter())
    latents = pro_film(compiled, reference, clips=1)
    torch._dynamo.reset()
    assert (latents - pro_film(tiny_sampler(step_cache="first_block"), reference, clips=1)).abs().max().item() <= SAME


def test_pro_encodes_the_anchor_and_its_clip_tokens_once_per_film(reference, monkeypatch):
    """The synthesize stage makes a renderer per clip; the sampler still encodes the anchor (VAE) and its CLIP
    tokens once, and each prompt's text once, and the clips are those of one renderer exactly."""
    sampler = tiny_sampler()
    calls = {"vae": 0, "clip": 0, "text": 0}
    encode = sampler.pipe.vae.encode
    monkeypatch.setattr(
        sampler.pipe.vae, "encode", lambda *a, **k: calls.update(vae=calls["vae"] + 1) or encode(*a, **k)
    )
    sampler.pipe.image_encoder.register_forward_hook(lambda *_: calls.update(clip=calls["clip"] + 1))
    sampler.pipe.text_encoder.register_forward_hook(lambda *_: calls.update(text=calls["text"] + 1))
    settings = mode_settings("pro", num_frames=9, steps=1)
    state, latents = None, []
    for k in range(2):
        output, state = FilmRenderer(sampler, settings, reference, PROMPTS).render_clip(k, state)
        latents.append(output.latents)
    assert calls == {"vae": 1, "clip": 1, "text": 3}  # two prompts and the negative one
    assert torch.equal(torch.stack(latents), pro_film(tiny_sampler(), reference, steps=1))


# ---- output-changing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lever", "at_most"),
    [(dict(step_cache="first_block"), 0.01), (dict(step_cache="taylorseer"), 0.25), (dict(fp8="storage"), 0.05)],
    ids=["first-block-cache", "taylorseer", "fp8-storage"],
)
def test_output_changing_lever_differs_but_stays_close(lever, at_most, reference):
    """Relative L2 distance of an 8-step clip's latents from the default's (measured on this tiny random model:
    first-block 0.0014, taylorseer 0.12, fp8 storage 0.013). A cache starts afresh each clip: the same clip again."""
    default = pro_film(tiny_sampler(), reference, clips=1, steps=8)
    sampler = tiny_sampler(**lever)
    changed = pro_film(sampler, reference, clips=1, steps=8)
    assert 0.0 < relative(changed, default) <= at_most
    assert torch.equal(pro_film(sampler, reference, clips=1, steps=8), changed)


def test_fp8_storage_keeps_the_block_weights_in_float8():
    sampler = tiny_sampler(fp8="storage")
    assert sampler.pipe.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn


def test_fp8_gemm_is_refused_off_a_recent_gpu():
    with pytest.raises(ValueError, match="compute capability 8.9"):
        tiny_sampler(fp8="gemm")


# ---- as settings ----------------------------------------------------------------------------------------------------


def test_only_output_changing_levers_enter_the_engine_identity(model_dir):
    plain = EngineSpec(model=model_dir)
    fast = EngineSpec(model=model_dir, compile=True, batch_cfg=True, attention_backend="_native_math")
    assert fast.identity() == plain.identity()  # the same clips: a film resumes with or without them
    changed = EngineSpec(model=model_dir, step_cache="first_block", step_cache_threshold=0.1, fp8="storage")
    expected = {"step_cache": "first_block", "step_cache_threshold": 0.1, "fp8": "storage"}
    assert changed.identity()["output_changing"] == expected
    assert _engine_identity(changed)["output_changing"] == expected  # the manifest's `engine`
    assert EngineSpec(model=model_dir, attention_backend="sage").output_changing() == {"attention_backend": "sage"}


def test_levers_are_request_settings(model_dir):
    request = FilmRequest(model=model_dir, compile=True, batch_cfg=True, step_cache="taylorseer", fp8="storage")
    engine = request.engine()
    assert (engine.compile, engine.batch_cfg, engine.step_cache, engine.fp8) == (True, True, "taylorseer", "storage")
    assert request.changes_from(FilmRequest(model=model_dir, step_cache="taylorseer", fp8="storage")) == []
    assert request.changes_from(FilmRequest(model=model_dir, compile=True, batch_cfg=True)) == ["step_cache", "fp8"]
    with pytest.raises(ValueError, match="step_cache_threshold is for step_cache first_block"):
        FilmRequest(step_cache_threshold=0.1)


def test_group_offload_streams_on_cuda_once_the_weights_are_prepared(model_dir, monkeypatch):
    """Streams keep a pinned CPU copy of each weight as it is when offload is enabled: LoRAs and fp8 come first."""
    calls = []
    offload = lambda self, **kwargs: calls.append(("offload", kwargs))  # noqa: E731
    monkeypatch.setattr(WanImageToVideoPipeline, "enable_group_offload", offload)
    load_wan_pipeline(model_dir, device="cuda", offload="group", prepare=lambda pipe: calls.append(("prepare", {})))
    assert [name for name, _ in calls] == ["prepare", "offload"]
    assert calls[1][1]["use_stream"] is True and calls[1][1]["onload_device"] == torch.device("cuda")
    with pytest.raises(ValueError, match="with offload group use fp8 storage"):
        EngineSpec(model=model_dir, offload="group", fp8="gemm")
