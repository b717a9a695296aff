"""--device-map: parsing, the maps it resolves to, accelerate dispatch of a quantized model (same logits), and the
layer-by-layer random-init builder that lets LLaMA-2-70B W6A8 be built within one GPU (here on the CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_cli
from flexq_cli.errors import FlexQError
from flexq_cli.placement import DeviceMap, explicit_map, layer_devices, parse_device_map, resolve


@pytest.mark.parametrize("text, parsed", [
    ("auto", DeviceMap(auto=True)),
    ("cuda:0:40,cpu", DeviceMap(entries=(("cuda:0", 40), ("cpu", None)))),
    ("cuda:0:40,cuda:1", DeviceMap(entries=(("cuda:0", 40), ("cuda:1", None)))),
    ("cpu", DeviceMap(entries=(("cpu", None),))),
    ("cpu:1, cpu:1", DeviceMap(entries=(("cpu", 1), ("cpu", 1)))),
])
def test_parse(text, parsed):
    assert parse_device_map(text) == parsed
    assert parse_device_map(str(parsed)) == parsed
    assert parse_device_map(None) is None


@pytest.mark.parametrize("text, fragment", [
    ("gpu", "cannot read 'gpu'"), ("cuda", "cannot read 'cuda'"), ("cuda:x", "cannot read"),
    ("cuda:0:4:1", "cannot read"), ("cpu:-1", "cannot read"), ("cpu,cuda:0:4", "only the last entry"),
    ("cuda:0:0,cpu", "places 0 layers"), ("auto,cpu", "cannot read 'auto'"),
])
def test_parse_rejects(text, fragment):
    with pytest.raises(FlexQError, match=fragment) as info:
        parse_device_map(text)
    assert info.value.hint


def test_layer_counts_must_add_up():
    assert layer_devices(parse_device_map("cpu:1,cpu"), 4) == ["cpu"] * 4
    for text in ("cpu:1", "cpu:3,cpu:2", "cpu:5,cpu"):
        with pytest.raises(FlexQError, match="decoder layers"):
            layer_devices(parse_device_map(text), 4)


def test_cli_bad_device_map_is_one_line(tiny_llama):
    for args, fragment in ((("--device-map", "gpu:0"), "cannot read 'gpu:0'"),
                           (("--device-map", "cpu", "--device", "cpu"), "pass only one"),
                           (("--device-map", "cpu:5"), "places 5 decoder layers")):
        code, _, err = run_cli("eval", tiny_llama, "--max-windows", 1, "--seqlen", 16, *args)
        last = err.strip().splitlines()[-1]
        assert code != 0 and last.startswith("flexq: error:") and fragment in last, err
        assert "Traceback" not in err
    if not torch.cuda.is_available():
        code, _, err = run_cli("generate", tiny_llama, "--prompt", "a", "--device-map", "cuda:0:1,cpu")
        assert code != 0 and "needs CUDA GPUs" in err.strip().splitlines()[-1], err


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory):
    from flexq_cli.quantize import load_quantized, quantize

    out = tmp_path_factory.mktemp("dm") / "q"
    quantize(str(tiny_llama), out, preset="flexq-rtn")
    return load_quantized(out)[0]


def test_explicit_map_places_the_ends_with_their_layers(quantized):
    from flexq_cli.arch import spec_for_config

    got = explicit_map(quantized, spec_for_config(quantized.config), ["cuda:0", "cpu"])
    assert got == {"model.embed_tokens": "cuda:0", "model.rotary_emb": "cuda:0", "model.layers.0": "cuda:0",
                   "model.layers.1": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


def test_auto_map_fills_the_gpu_then_host_memory(quantized):
    from flexq_cli.arch import spec_for_config

    layer = sum(t.numel() * t.element_size() for t in quantized.model.layers[0].state_dict().values())
    head = quantized.lm_head.weight.numel() * quantized.lm_head.weight.element_size()  # = the embedding's size
    spec = spec_for_config(quantized.config)
    got = resolve(quantized, spec, DeviceMap(auto=True), max_memory={0: 2 * head + layer * 3 // 2, "cpu": 1 << 30})
    assert got["model.embed_tokens"] == got["model.layers.0"] == "cuda:0" and got["model.layers.1"] == "cpu"
    assert resolve(quantized, spec, DeviceMap(auto=True), max_memory={0: 3 * head, "cpu": 1 << 30}) == {"": "cuda:0"}


@pytest.mark.parametrize("fuse", [False, True])
def test_dispatched_over_cpu_hooks_gives_the_same_logits(quantized, fuse):
    from flexq_cli.arch import spec_for_config
    from flexq_cli.evaluate import place
    from flexq_cli.generate import SamplingConfig, eager_reason, generate_tokens
    from flexq_cli.placement import dispatch

    ids = torch.randint(0, quantized.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    alone = place(copy.deepcopy(quantized), None, fuse)  # fused before dispatch, as load_for_eval does
    model = dispatch(copy.deepcopy(alone), explicit_map(alone, spec_for_config(alone.config), ["cpu", "cpu"]),
                     hooks=True)
    assert hasattr(model.model.layers[1], "_hf_hook")  # accelerate's hooks really run
    with torch.no_grad():
        assert torch.equal(model(ids).logits, alone(ids).logits)
    cfg = SamplingConfig(max_new_tokens=6)
    assert generate_tokens(model, [[3, 4, 5]], cfg)["tokens"] == generate_tokens(alone, [[3, 4, 5]], cfg)["tokens"]
    assert eager_reason(model) is None  # one device


def test_a_spread_model_decodes_eagerly_and_says_why():
    from flexq_cli.generate import eager_reason

    model = torch.nn.Linear(2, 2)
    model.hf_device_map = {"a": "cuda:0", "b": "cpu"}
    assert "spread over cpu, cuda:0" in eager_reason(model)


def tiny_config():
    from flexq_cli.e2e_bench import shape_config

    config = shape_config("llama-2-7b")
    for key, value in dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=500, max_position_embeddings=256).items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("preset", [None, "flexq-rtn", "w6a6"])
def test_layer_by_layer_random_init_builder(preset):
    from flexq_cli.arch import linear_names, spec_for_config
    from flexq_cli.config import load_preset
    from flexq_cli.e2e_bench import build_random, tensor_bytes
    from flexq_cli.modules import QuantLinear
    from flexq_cli.quantize import quantized_skeleton

    config, quant = tiny_config(), load_preset(preset) if preset else None
    skeleton = quantized_skeleton(config, quant, torch.float16)
    planned = tensor_bytes(skeleton, {"": "cpu"})
    model = build_random(skeleton, {"": "cpu"}, quant)
    assert not any(t.is_meta for t in model.state_dict().values())
    assert tensor_bytes(model, {"": "cpu"}) == planned
    for name in linear_names(model, spec_for_config(config)):
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantLinear) == (quant is not None)
        if quant is not None:
            assert layer.act_bits == quant.act_bits_for(name)
            assert layer.scales.abs().sum() > 0
    assert all(model.get_submodule(f"model.layers.{i}.input_layernorm").weight.eq(1).all() for i in range(3))
    with torch.no_grad():
        logits = model.float()(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_cli_generate_with_a_cpu_device_map(tiny_llama, tmp_path):
    from flexq_cli.quantize import quantize

    quantize(str(tiny_llama), tmp_path / "q", preset="w6a8")
    args = ("generate", tmp_path / "q", "--prompt", "The cat", "--max-new-tokens", 5)
    code, want, err = run_cli(*args, "--device", "cpu")
    assert code == 0, err
    code, got, err = run_cli(*args, "--device-map", "cpu:1,cpu")
    assert code == 0, err
    assert got == want


# --- GPU: the kernels on whichever device holds the layer ----------------------------------------------------

def _needs_gpus(n: int):
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None:
        pytest.skip("needs CUDA and CuPy")
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs, {torch.cuda.device_count()} visible")


def _tiny_quantized_on_cpu(layers: int = 4):
    """A float16 LLaMA of ``layers`` decoder layers, kernel-friendly shapes, quantized on the CPU (flexq: A6 + A8)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flexq_cli.arch import spec_for_config
    from flexq_cli.config import load_preset
    from flexq_cli.quantize import quantize_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=640, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).half().eval()
    quantize_model(model, spec_for_config(config), load_preset("flexq-rtn"), torch.float16)
    return model


def _split_generates_like_one_gpu(device_map: str, fuse: bool, spread: bool = True):
    from flexq_cli.evaluate import place
    from flexq_cli.generate import SamplingConfig, generate_tokens
    from flexq_cli.placement import execution_device

    model = _tiny_quantized_on_cpu()
    prompts, cfg = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], SamplingConfig(max_new_tokens=24, stop_at_eos=False)
    one = place(copy.deepcopy(model), None, fuse).to("cuda:0")
    want = generate_tokens(one, prompts, cfg, use_graph=True)
    assert want["graph"]
    del one
    placed = place(model, parse_device_map(device_map), fuse)
    got = generate_tokens(placed, prompts, cfg, use_graph=True)
    if spread:
        assert not got["graph"] and "spread over" in got["eager_reason"]
    assert got["tokens"] == want["tokens"]
    return [str(execution_device(layer)) for layer in placed.model.layers]


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [False, True])
def test_gpu_and_offloaded_cpu_layers_generate_the_same_tokens(fuse):
    _needs_gpus(1)
    # layers 1-2 kept in host memory and computed on cuda:0 (offloaded), 0 and 3 resident on cuda:0
    assert _split_generates_like_one_gpu("cuda:0:1,cpu:2,cuda:0", fuse) == ["cuda:0"] * 4


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [False, True])
def test_two_gpus_generate_the_same_tokens(fuse):
    _needs_gpus(2)
    devices = _split_generates_like_one_gpu("cuda:0:2,cuda:1", fuse)
    assert devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


@pytest.mark.gpu
def test_auto_map_generates_the_same_tokens():
    _needs_gpus(1)  # a tiny model: auto may keep it on one GPU (then plain .to and a CUDA graph)
    devices = _split_generates_like_one_gpu("auto", True, spread=False)
    assert all(d.startswith("cuda") for d in devices)
