"""SVI LoRA files on the tiny Wan transformer: every layout lands every pair, bad files fail loudly and early."""

import copy

import pytest
import safetensors.torch
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from svi_model.lora_files import (
    SVI_LORA_TARGETS,
    LoraFileError,
    apply_lora,
    lora_from_peft,
    read_lora_file,
    save_lora_file,
)
from svi_model.tiny import tiny_components

RANK = 4
# Original Wan name -> diffusers name of every layer SVI adapts, in each of the tiny model's 2 blocks (20 pairs).
ADAPTED = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
MODULES = [f"blocks.{n}.{diffusers}" for n in range(2) for diffusers in ADAPTED.values()]
# Layout name -> (key template, names of the A/B halves, alpha key template or None).
LAYOUTS = {
    "peft_default": ("blocks.{n}.{wan}.{half}.default.weight", ("lora_A", "lora_B"), None),
    "pipe_dit": ("pipe.dit.blocks.{n}.{wan}.{half}.default.weight", ("lora_A", "lora_B"), None),
    "no_default": ("blocks.{n}.{wan}.{half}.weight", ("lora_A", "lora_B"), None),
    "diffusion_model": ("diffusion_model.blocks.{n}.{wan}.{half}.weight", ("lora_A", "lora_B"), None),
    "down_up": ("diffusion_model.blocks.{n}.{wan}.{half}.weight", ("lora_down", "lora_up"), None),
    "ddp_compiled": ("module._orig_mod.blocks.{n}.{wan}.{half}.default.weight", ("lora_A", "lora_B"), None),
    "diffusers_saved": ("transformer.blocks.{n}.{diffusers}.{half}.weight", ("lora_A", "lora_B"), None),
    "down_up_alpha": (
        "diffusion_model.blocks.{n}.{wan}.{half}.weight",
        ("lora_down", "lora_up"),
        "diffusion_model.blocks.{n}.{wan}.alpha",
    ),
}
ALPHA = 2.0  # with rank 4: scale 0.5


def random_lora(transformer, seed=0, ranks=None) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(n, wan name): (A [r, in], B [out, r])} for every adapted layer, B non-zero so the output changes."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for n in range(2):
        for wan, diffusers in ADAPTED.items():
            linear = transformer.get_submodule(f"blocks.{n}.{diffusers}")
            rank = (ranks or {}).get(f"blocks.{n}.{diffusers}", RANK)
            a = torch.randn(rank, linear.in_features, generator=generator) * 0.3
            b = torch.randn(linear.out_features, rank, generator=generator) * 0.3
            pairs[n, wan] = (a, b)
    return pairs


def write_lora(path, pairs, layout) -> str:
    """Write `pairs` (from random_lora) to `path` in one of LAYOUTS; returns the path."""
    template, halves, alpha_template = LAYOUTS[layout]
    tensors = {}
    for (n, wan), (a, b) in pairs.items():
        names = dict(n=n, wan=wan, diffusers=ADAPTED[wan])
        tensors[template.format(**names, half=halves[0])] = a
        tensors[template.format(**names, half=halves[1])] = b
        if alpha_template:
            tensors[alpha_template.format(n=n, wan=wan)] = torch.tensor(ALPHA)
    safetensors.torch.save_file(tensors, str(path))
    return str(path)


def forward(transformer) -> torch.Tensor:
    """The transformer's output [1, 16, 2, 4, 4] on fixed random inputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 36, 2, 4, 4, generator=generator),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 512, 32, generator=generator),
            encoder_hidden_states_image=torch.randn(1, 17, 16, generator=generator),
            return_dict=False,
        )[0]


def peft_layers(transformer) -> int:
    return sum(isinstance(module, BaseTunerLayer) for module in transformer.modules())


def assert_unmodified(transformer, base):
    assert peft_layers(transformer) == 0
    for name, tensor in base.state_dict().items():
        assert torch.equal(transformer.state_dict()[name], tensor), name


@pytest.fixture(scope="module")
def base_transformer():
    """The tiny transformer, never modified: tests work on deep copies."""
    return tiny_components()["transformer"]


@pytest.fixture(scope="module")
def base_output(base_transformer) -> torch.Tensor:
    return forward(base_transformer)


@pytest.fixture
def transformer(base_transformer):
    return copy.deepcopy(base_transformer)


@pytest.fixture
def pairs(base_transformer):
    return random_lora(base_transformer)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_lands_every_pair_fused(layout, tmp_path, transformer, base_transformer, base_output, pairs):
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, layout))
    assert sorted(lora.pairs) == sorted(MODULES)
    assert lora.ignored == []
    template, halves, _ = LAYOUTS[layout]
    first_key = template.format(n=0, wan="self_attn.q", diffusers="attn1.to_q", half=halves[0])
    assert lora.pairs["blocks.0.attn1.to_q"].a_key == first_key  # kept for error messages
    expected_scale = ALPHA / RANK if LAYOUTS[layout][2] else 1.0

    apply_lora(transformer, lora, scale=0.8)

    for (n, wan), (a, b) in pairs.items():
        module = f"blocks.{n}.{ADAPTED[wan]}"
        delta = transformer.get_submodule(module).weight - base_transformer.get_submodule(module).weight
        torch.testing.assert_close(delta, 0.8 * expected_scale * (b @ a), rtol=0, atol=1e-6, msg=module)
    assert peft_layers(transformer) == 0  # fused: plain nn.Linear layers, no extra inference cost
    assert not torch.allclose(forward(transformer), base_output, atol=1e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_and_unfused_outputs_agree(layout, tmp_path, base_transformer, base_output, pairs):
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, layout))
    fused, unfused = copy.deepcopy(base_transformer), copy.deepcopy(base_transformer)
    apply_lora(fused, lora)
    apply_lora(unfused, lora, fuse=False)

    assert peft_layers(unfused) == len(MODULES)
    torch.testing.assert_close(forward(unfused), forward(fused), rtol=0, atol=1e-5)
    assert not torch.allclose(forward(unfused), base_output, atol=1e-3)


def test_adapter_scale_matches_fused_scale(tmp_path, base_transformer, base_output, pairs):
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, "pipe_dit"))
    unfused, fused_half = copy.deepcopy(base_transformer), copy.deepcopy(base_transformer)
    apply_lora(unfused, lora, scale=0.0, fuse=False)
    apply_lora(fused_half, lora, scale=0.5)

    torch.testing.assert_close(forward(unfused), base_output, rtol=0, atol=0)
    unfused.set_adapters(["svi"], [0.5])
    torch.testing.assert_close(forward(unfused), forward(fused_half), rtol=0, atol=1e-5)


def test_ranks_may_differ_per_module(tmp_path, base_transformer, base_output):
    ranks = {"blocks.0.attn1.to_q": 2, "blocks.1.ffn.net.2": 8}
    lora = read_lora_file(
        write_lora(tmp_path / "lora.safetensors", random_lora(base_transformer, ranks=ranks), "down_up_alpha")
    )
    assert lora.pairs["blocks.0.attn1.to_q"].scale == ALPHA / 2
    assert lora.pairs["blocks.1.ffn.net.2"].scale == ALPHA / 8
    fused, unfused = copy.deepcopy(base_transformer), copy.deepcopy(base_transformer)
    apply_lora(fused, lora)
    apply_lora(unfused, lora, fuse=False)
    torch.testing.assert_close(forward(unfused), forward(fused), rtol=0, atol=1e-5)


def test_adapter_that_misses_pairs_is_caught_and_removed(tmp_path, transformer, pairs, monkeypatch):
    """Guard against the silent failure: diffusers loading part of a LoRA (here: block 1 dropped on the way)."""
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, "pipe_dit"))
    load_lora_adapter = transformer.load_lora_adapter

    def load_block_0_only(state_dict, **kwargs):
        load_lora_adapter({k: v for k, v in state_dict.items() if k.startswith("blocks.0.")}, **kwargs)

    monkeypatch.setattr(transformer, "load_lora_adapter", load_block_0_only)
    with pytest.raises(LoraFileError, match=r"wrapped 10 modules for 20 pairs.*blocks\.1\.attn1\.to_k"):
        apply_lora(transformer, lora, fuse=False)
    assert "svi" not in getattr(transformer, "peft_config", {})


def test_a_without_its_b_is_named(tmp_path, pairs):
    path = write_lora(tmp_path / "lora.safetensors", pairs, "pipe_dit")
    tensors = safetensors.torch.load_file(path)
    del tensors["pipe.dit.blocks.1.cross_attn.k.lora_B.default.weight"]
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(LoraFileError, match=r"pipe\.dit\.blocks\.1\.cross_attn\.k\.lora_A\.default\.weight"):
        read_lora_file(path)


def test_unknown_key_is_named(tmp_path, pairs):
    path = write_lora(tmp_path / "lora.safetensors", pairs, "peft_default")
    tensors = safetensors.torch.load_file(path)
    tensors["blocks.0.norm3.lora_A.default.weight"] = torch.zeros(RANK, 24)
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(LoraFileError, match=r"blocks\.0\.norm3\.lora_A\.default\.weight"):
        read_lora_file(path)


@pytest.mark.parametrize("fuse", [True, False])
def test_misshaped_tensor_is_named_and_nothing_changes(fuse, tmp_path, transformer, base_transformer, pairs):
    a, b = pairs[1, "ffn.2"]
    pairs[1, "ffn.2"] = (a, b[:-1])  # B [out - 1, r]; the last pair in the file, so a partial apply would show
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, "pipe_dit"))
    with pytest.raises(LoraFileError, match=r"pipe\.dit\.blocks\.1\.ffn\.2\.lora_B\.default\.weight.*\[24, 4\]"):
        apply_lora(transformer, lora, fuse=fuse)
    assert_unmodified(transformer, base_transformer)


def test_module_missing_from_the_transformer_is_named(tmp_path, transformer, base_transformer, pairs):
    pairs[5, "self_attn.q"] = tuple(t.clone() for t in pairs[0, "self_attn.q"])  # the tiny model has 2 blocks
    lora = read_lora_file(write_lora(tmp_path / "lora.safetensors", pairs, "peft_default"))
    with pytest.raises(LoraFileError, match=r"blocks\.5\.self_attn\.q\.lora_A\.default\.weight.*blocks\.5\.attn1"):
        apply_lora(transformer, lora)
    assert_unmodified(transformer, base_transformer)


def test_svi_extra_modules_are_reported_not_applied(tmp_path, transformer, base_transformer, pairs):
    path = write_lora(tmp_path / "lora.safetensors", pairs, "pipe_dit")
    tensors = safetensors.torch.load_file(path)
    extras = {"pipe.dit.dwpose_embedding.0.weight": torch.ones(3, 3), "randomref_embedding_pose.2.bias": torch.ones(3)}
    safetensors.torch.save_file({**tensors, **extras}, path)

    lora = read_lora_file(path)
    assert sorted(lora.ignored) == sorted(extras)
    assert len(lora.pairs) == len(MODULES)
    apply_lora(transformer, lora)
    assert set(transformer.state_dict()) == set(base_transformer.state_dict())


def test_not_safetensors_names_the_file(tmp_path):
    path = tmp_path / "svi-film.safetensors"
    path.write_bytes(b"this is a pickle, honestly")
    with pytest.raises(LoraFileError, match="svi-film.safetensors"):
        read_lora_file(path)
    with pytest.raises(LoraFileError, match="missing.safetensors"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_file_without_lora_keys_is_an_error(tmp_path):
    path = tmp_path / "dance-extras.safetensors"
    safetensors.torch.save_file({"dwpose_embedding.0.weight": torch.ones(2, 2)}, str(path))
    with pytest.raises(LoraFileError, match="holds no LoRA tensors"):
        read_lora_file(path)


def test_save_then_read_round_trips_in_released_layout(tmp_path, pairs):
    lora = read_lora_file(write_lora(tmp_path / "in.safetensors", pairs, "diffusion_model"))
    out = tmp_path / "out.safetensors"
    save_lora_file(lora, out, metadata={"origin": "test"})

    written = safetensors.torch.load_file(str(out))
    assert sorted(written) == sorted(
        f"blocks.{n}.{wan}.lora_{half}.default.weight" for n, wan in pairs for half in "AB"
    )
    assert all(tensor.dtype == torch.float32 for tensor in written.values())
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".tmp")] == []
    again = read_lora_file(out)
    for module, pair in lora.pairs.items():
        assert torch.equal(again.pairs[module].a, pair.a) and torch.equal(again.pairs[module].b, pair.b), module
        assert again.pairs[module].scale == 1.0


def test_save_folds_alpha_scale_into_b(tmp_path, base_transformer, pairs):
    lora = read_lora_file(write_lora(tmp_path / "in.safetensors", pairs, "down_up_alpha"))
    save_lora_file(lora, tmp_path / "out.safetensors")
    again = read_lora_file(tmp_path / "out.safetensors")
    from_alpha, from_saved = copy.deepcopy(base_transformer), copy.deepcopy(base_transformer)
    apply_lora(from_alpha, lora)
    apply_lora(from_saved, again)
    torch.testing.assert_close(forward(from_saved), forward(from_alpha), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lora_alpha", [RANK, 2 * RANK])
def test_peft_trained_adapter_saves_and_reapplies(lora_alpha, tmp_path, base_transformer):
    trained = copy.deepcopy(base_transformer)
    trained.add_adapter(LoraConfig(r=RANK, lora_alpha=lora_alpha, target_modules=list(SVI_LORA_TARGETS)))
    assert peft_layers(trained) == len(MODULES)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if ".lora_" in name:  # B starts at zero; randomise both as training would
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    trained_output = forward(trained)

    save_lora_file(lora_from_peft(trained), tmp_path / "trained.safetensors")
    fresh = copy.deepcopy(base_transformer)
    apply_lora(fresh, read_lora_file(tmp_path / "trained.safetensors"))
    torch.testing.assert_close(forward(fresh), trained_output, rtol=0, atol=1e-5)


# Full-tensor deltas as distill LoRAs (lightx2v, Lightning) carry them: original name -> diffusers parameter.
DIFFS = {
    "diffusion_model.blocks.0.self_attn.norm_q.diff": "blocks.0.attn1.norm_q.weight",
    "diffusion_model.blocks.1.cross_attn.q.diff_b": "blocks.1.attn2.to_q.bias",
    "diffusion_model.blocks.0.modulation.diff": "blocks.0.scale_shift_table",
}


def write_lora_with_diffs(path, pairs, base_transformer, shapes=None) -> tuple[str, dict[str, torch.Tensor]]:
    """A down/up LoRA file plus `.diff`/`.diff_b` entries; returns it and the deltas by diffusers parameter."""
    write_lora(path, pairs, "down_up_alpha")
    tensors = safetensors.torch.load_file(str(path))
    generator = torch.Generator().manual_seed(11)
    deltas = {}
    for key, parameter in DIFFS.items():
        shape = (shapes or {}).get(key, base_transformer.get_parameter(parameter).shape)
        deltas[parameter] = tensors[key] = torch.randn(shape, generator=generator)
    safetensors.torch.save_file(tensors, str(path))
    return str(path), deltas


def test_full_deltas_are_added_to_their_parameters_at_the_lora_strength(tmp_path, transformer, base_transformer, pairs):
    path, deltas = write_lora_with_diffs(tmp_path / "distill.safetensors", pairs, base_transformer)
    lora = read_lora_file(path)
    assert {name: key for name, (key, _) in lora.diffs.items()} == {
        "blocks.0.attn1.norm_q.weight": "diffusion_model.blocks.0.self_attn.norm_q.diff",
        "blocks.1.attn2.to_q.bias": "diffusion_model.blocks.1.cross_attn.q.diff_b",
        "blocks.0.scale_shift_table.weight": "diffusion_model.blocks.0.modulation.diff",
    }
    apply_lora(transformer, lora, scale=0.5)
    for parameter, delta in deltas.items():
        expected = base_transformer.get_parameter(parameter) + 0.5 * delta
        torch.testing.assert_close(transformer.get_parameter(parameter), expected, rtol=0, atol=1e-6)


def test_full_deltas_are_only_fused_and_must_fit(tmp_path, transformer, base_transformer, pairs):
    path, _ = write_lora_with_diffs(tmp_path / "distill.safetensors", pairs, base_transformer)
    with pytest.raises(LoraFileError, match=r"full deltas \(.diff/.diff_b\), which can only be fused"):
        apply_lora(transformer, read_lora_file(path), fuse=False)
    wrong = {"diffusion_model.blocks.1.cross_attn.q.diff_b": (3,)}
    path, _ = write_lora_with_diffs(tmp_path / "wrong.safetensors", pairs, base_transformer, wrong)
    with pytest.raises(LoraFileError, match=r"'diffusion_model.blocks.1.cross_attn.q.diff_b' .* should be \[24\]"):
        apply_lora(transformer, read_lora_file(path))
    assert_unmodified(transformer, base_transformer)
