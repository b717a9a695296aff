"""Accuracy algorithms (clip search, GPTQ, smoothing): toy linears first, then a tiny LLaMA end to end."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from flexq_cli.algorithms.clip import search_scales
from flexq_cli.algorithms.gptq import Hessian, gptq_quantize
from flexq_cli.config import QuantConfig
from flexq_cli.errors import FlexQError
from flexq_cli.primitives import dequantize, quantize_weight, quantize_with_scales


def _toy(n=24, k=256, tokens=512, seed=0):
    """Heavy-tailed weights and correlated inputs with a few outlier channels: where RTN leaves error behind."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (1 + 3 * (torch.rand(n, k, generator=g) > 0.99))
    x = torch.randn(tokens, k, generator=g) @ (torch.eye(k) + 0.3 * torch.randn(k, k, generator=g) / k ** 0.5)
    x[:, :4] *= 8
    return w, x


def _out_err(w, x, codes, scales, g=128):
    return ((x @ (w - dequantize(codes, scales, g)).T) ** 2).mean().item()


def _hessian(x):
    h = Hessian(x.shape[1])
    for chunk in x.split(100):
        h.add(chunk)
    return h


def test_hessian_accumulates_the_mean_outer_product():
    _, x = _toy()
    assert torch.allclose(_hessian(x).h, 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group", [128, -1])
def test_clip_search_never_loses_to_absmax_on_its_own_measure(group):
    w, x = _toy()
    q0, s0 = quantize_weight(w, 6, group)
    s_mse = search_scales(w, 6, group)
    assert s_mse.dtype == torch.float16 and s_mse.shape == s0.shape and torch.all(s_mse <= s0)
    mse = lambda s: ((w - dequantize(quantize_with_scales(w, s, 6, group), s, group)) ** 2).sum().item()
    assert mse(s_mse) <= mse(s0)
    s_out = search_scales(w, 6, group, _hessian(x).h)
    if group == -1:  # one group per row: the Hessian block is exact, so the output error cannot grow
        assert _out_err(w, x, quantize_with_scales(w, s_out, 6, -1), s_out, -1) <= _out_err(w, x, q0, s0, -1)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("clip", ["none", "output"])
def test_gptq_codes_are_format_codes_and_cut_the_output_error(act_order, clip):
    w, x = _toy()
    codes, scales = gptq_quantize(w, _hessian(x).h, 6, 128, act_order=act_order, clip=clip)
    q0, s0 = quantize_weight(w, 6, 128)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scales.shape == s0.shape
    assert scales.dtype == torch.float16 and codes.min() >= -32 and codes.max() <= 31
    # the stored scales reproduce the codes' values exactly: code * scale is what the kernels compute with
    assert torch.equal(quantize_with_scales(dequantize(codes, scales, 128), scales, 6, 128), codes)
    assert _out_err(w, x, codes, scales) < 0.8 * _out_err(w, x, q0, s0)


def test_gptq_zero_padding_stays_zero_and_per_channel_works():
    w, x = _toy(k=200)
    wp, xp = torch.nn.functional.pad(w, (0, 56)), torch.nn.functional.pad(x, (0, 56))
    codes, scales = gptq_quantize(wp, _hessian(xp).h, 6, 128)
    assert torch.all(codes[:, 200:] == 0)
    codes, scales = gptq_quantize(wp, _hessian(xp).h, 6, -1)
    assert scales.shape == (24, 1) and torch.all(codes[:, 200:] == 0)


@pytest.mark.parametrize("raw,match", [({"weight_clip": "max"}, "weight_clip"), ({"gptq_damp": 0}, "gptq_damp"),
                                       ({"smooth_alpha": 1.5}, "smooth_alpha"), ({"gptq": "yes"}, "gptq"),
                                       ({"smooth_search": True, "smooth_alpha": 0.5}, "drop smooth_alpha"),
                                       ({"smooth_search": "yes"}, "smooth_search")])
def test_bad_algorithm_options_are_rejected(raw, match):
    with pytest.raises(FlexQError, match=match):
        QuantConfig.from_dict(raw)


def test_algorithm_options_round_trip_and_say_what_they_need():
    cfg = QuantConfig(weight_clip="output", gptq=True, smooth_alpha=0.5)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg and cfg.needs_calibration and cfg.needs_activations
    assert not QuantConfig(weight_clip="mse").needs_calibration
    assert QuantConfig(smooth_alpha=0.5).needs_calibration and not QuantConfig(smooth_alpha=0.5).needs_activations
    assert QuantConfig(smooth_search=True).needs_activations and QuantConfig(smooth_search=True).needs_calibration


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8])
def test_smoothing_folds_keep_the_float_model_function(tiny_llama, calib, alpha):
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.smooth import smooth_model
    from flexq_cli.arch import linear_names, spec_for_config
    from flexq_cli.calibrate import load_calibration

    _, tensors = load_calibration(calib)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    spec = spec_for_config(model.config)  # 4 query heads on 2 KV heads: the v -> o fold is grouped
    ids = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        before = model(ids).logits
        v_before = model.model.layers[0].self_attn.v_proj.weight.clone()
        spread = smooth_model(model, spec, {n: tensors[f"{n}.absmax"] for n in linear_names(model, spec)}, alpha)
        after = model(ids).logits
    assert set(spread) == {"q_proj", "o_proj", "gate_proj", "down_proj"}
    assert alpha == 0.0 or not torch.equal(v_before, model.model.layers[0].self_attn.v_proj.weight)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4)


def test_hadamard_matrices_are_orthogonal_and_odd_sizes_are_refused():
    from flexq_cli.algorithms.rotate import hadamard

    for n in (1, 64, 96, 576, 4096, 5120):  # Sylvester, Paley 24 and 12 x 12 x 4 (SmolLM2), LLaMA-2-13B's 5120
        h = hadamard(n)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(h.abs(), torch.full((n, n), n ** -0.5, dtype=torch.float64))
    assert not torch.equal(hadamard(64, seed=0), hadamard(64, seed=1))
    with pytest.raises(ValueError, match="no Hadamard matrix of order 18"):
        hadamard(18)


@pytest.mark.parametrize("tied", [False, True])
def test_rotation_keeps_the_float_model_function(tmp_path, tokenizer, tied):
    """Residual rotation with the norm weights folded, per-head value rotation under grouped-query attention
    (4 query heads on 2 KV heads), a tied head untied: the logits stay those of the float model."""
    from conftest import make_tiny
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.rotate import rotate_model
    from flexq_cli.arch import spec_for_config

    path = make_tiny(tmp_path / "m", tokenizer, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for norm in [m for n, m in model.named_modules() if n.endswith("norm")]:
        norm.weight.data = 0.5 + torch.rand(norm.weight.shape)  # non-trivial weights to fold
    ids = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        before = model(ids).logits
        q_before = model.model.layers[1].self_attn.q_proj.weight.clone()
        rotate_model(model, spec_for_config(model.config))
        after = model(ids).logits
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert torch.all(model.model.layers[1].input_layernorm.weight == 1)
    assert not torch.allclose(q_before, model.model.layers[1].self_attn.q_proj.weight, atol=1e-3)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4), (after - before).abs().max()


def test_quantize_with_rotation_saves_an_untied_head_and_refuses_smooth_alpha(tmp_path, tiny_llama, calib):
    from transformers import AutoModelForCausalLM

    from flexq_cli.quantize import load_quantized

    with pytest.raises(ValueError, match="use smooth_search"):
        QuantConfig(rotate=True, smooth_alpha=0.5)
    preset = _preset(tmp_path, act_bits=8, rotate=True, smooth_search=True, weight_clip="output")
    code, _, err = run_cli("quantize", tiny_llama, "--preset", preset, "--calib", calib, "--out", tmp_path / "q")
    assert code == 0, err
    model, _, manifest = load_quantized(tmp_path / "q")
    assert manifest.config["quant"]["rotate"] and "rotate_seconds" in manifest.extra["algorithms"]
    fp = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    assert not torch.allclose(model.model.embed_tokens.weight.float(), fp.model.embed_tokens.weight, atol=1e-2)
    ids = torch.randint(0, 1000, (1, 48))
    with torch.no_grad():
        lf, lq = fp(ids).logits, model(ids).logits
    assert (lq - lf).norm() / lf.norm() < 0.1, ((lq - lf).norm() / lf.norm()).item()
    for cmd in ("quantize", "analyze"):
        code, _, err = run_cli(cmd, tiny_llama, "--preset", preset, "--calib", calib, "--stream",
                               "--out", tmp_path / f"s-{cmd}")
        assert code != 0 and "rotate is not available with --stream" in err and "Traceback" not in err
        assert not (tmp_path / f"s-{cmd}").exists()
    code, _, err = run_cli("analyze", tiny_llama, "--calib", calib, "--preset", preset, "--a8-count", 2,
                           "--samples", 2, "--seqlen", 64, "--out", tmp_path / "plan")
    assert code == 0, err
    unrotated = _preset(tmp_path, act_bits=8, smooth_search=True, weight_clip="output")
    code, _, err = run_cli("quantize", tiny_llama, "--plan", tmp_path / "plan", "--preset", unrotated,
                           "--calib", calib, "--out", tmp_path / "q2")
    assert code != 0 and "transforms the model otherwise (smooth_search)" in err and "rotated" in err


def _preset(tmp_path, **fields) -> str:
    path = tmp_path / "algo.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {"act_bits": 6, **fields}.items()))
    return str(path)


def test_quantize_with_every_algorithm_records_them_and_loads(tmp_path, tiny_llama, calib):
    from transformers import AutoModelForCausalLM

    from flexq_cli.quantize import load_quantized

    preset = _preset(tmp_path, weight_clip="output", gptq=True, gptq_act_order=True, smooth_alpha=0.5)
    code, out, err = run_cli("quantize", tiny_llama, "--preset", preset, "--calib", calib, "--out", tmp_path / "q")
    assert code == 0, err
    model, _, manifest = load_quantized(tmp_path / "q")
    quant = manifest.config["quant"]
    assert quant["gptq"] and quant["weight_clip"] == "output" and quant["smooth_alpha"] == 0.5
    assert manifest.extra["algorithms"]["calibration_tokens"] == 3 * 64
    fp = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (1, 48))
    with torch.no_grad():
        lf, lq = fp(ids).logits, model(ids).logits
    assert (lq - lf).norm() / lf.norm() < 0.2


def test_a_config_that_needs_calibration_without_calib_is_a_one_line_error(tmp_path, tiny_llama):
    code, out, err = run_cli("quantize", tiny_llama, "--preset", _preset(tmp_path, gptq=True), "--out", tmp_path / "q")
    assert code != 0 and "needs calibration data" in err and "--calib" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_gptq_lowers_the_calibration_loss_of_the_tiny_model(tmp_path, tiny_llama, calib):
    """Layer-by-layer GPTQ (on quantized predecessors) against RTN, on the calibration tokens themselves."""
    from flexq_cli.calibrate import load_calibration
    from flexq_cli.quantize import load_quantized

    _, tensors = load_calibration(calib)
    ids = tensors["input_ids"].long()
    losses = {}
    for name, fields in (("rtn", {}), ("gptq", {"gptq": True})):
        code, _, err = run_cli("quantize", tiny_llama, "--preset", _preset(tmp_path, act_bits=8, **fields),
                               "--calib", calib, "--out", tmp_path / name)
        assert code == 0, err
        model, _, _ = load_quantized(tmp_path / name)
        with torch.no_grad():
            losses[name] = model(ids, labels=ids).loss.item()
    assert losses["gptq"] < losses["rtn"]


def test_analyze_measures_the_smoothed_model(tmp_path, tiny_llama, calib):
    from flexq_cli.analyze import load_plan

    preset = _preset(tmp_path, act_bits=8, smooth_alpha=0.5)
    code, out, err = run_cli("analyze", tiny_llama, "--calib", calib, "--preset", preset, "--a8-count", 3,
                             "--samples", 2, "--seqlen", 32, "--out", tmp_path / "plan", "--device", "cpu")
    assert code == 0, err
    manifest, _ = load_plan(tmp_path / "plan")
    assert manifest.config["quant"]["smooth_alpha"] == 0.5
    code, _, err = run_cli("quantize", tiny_llama, "--plan", tmp_path / "plan", "--calib", calib, "--out", tmp_path / "q")
    assert code == 0, err
    code, _, err = run_cli("quantize", tiny_llama, "--plan", tmp_path / "plan", "--preset", "w6a8",
                           "--out", tmp_path / "q2")
    assert code != 0 and "transforms the model otherwise (no smoothing)" in err and "(alpha 0.5)" in err


def _layer_and_inputs(tiny_llama, outlier: float):
    """Decoder layer 0 of the tiny LLaMA (float32), its config, and a sample of each group's input from a real
    forward pass; ``outlier`` scales input channel 3 of every norm group (folded into the norm's weight)."""
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.sequential import layer_hessians
    from flexq_cli.arch import spec_for_config

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    spec = spec_for_config(model.config)
    layer = model.model.layers[0]
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        norm.weight.data[3] *= outlier
    inputs = []
    hook = layer.register_forward_pre_hook(lambda m, a, k: inputs.append((a[0] if a else k["hidden_states"],
                                           {n: v for n, v in k.items() if n != "hidden_states"})), with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(1)), use_cache=False)
    hook.remove()
    samples: dict = {}
    hessians = layer_hessians(layer, spec, QuantConfig(act_bits=6), inputs, samples)
    return model, spec, layer, inputs, samples, hessians


@pytest.mark.parametrize("outlier", [1.0, 30.0])
def test_smoothing_search_keeps_the_function_and_never_raises_its_measured_error(tiny_llama, outlier):
    """The folds leave the float layer's function unchanged; each group's quantized output error after the fold
    is the best of the candidates, so never above no smoothing's; an outlier channel makes smoothing win; the
    Hessians handed on describe the smoothed inputs."""
    from flexq_cli.algorithms.sequential import layer_hessians
    from flexq_cli.algorithms.smooth import group_output_error, search_layer

    model, spec, layer, inputs, samples, hessians = _layer_and_inputs(tiny_llama, outlier)
    config = QuantConfig(act_bits=6)
    with torch.no_grad():
        before_out = [layer(h, **k) for h, k in inputs]
    groups = {g.linears[0]: g for g in spec.groups}
    none_err = {key: group_output_error(samples[key], [layer.get_submodule(r) for r in g.linears],
                                        [6] * len(g.linears), None, config) for key, g in groups.items()}
    with torch.no_grad():
        chosen = search_layer(layer, spec, config, model.config, "model.layers.0.", samples, hessians)
        after_out = [layer(h, **k) for h, k in inputs]
    assert set(chosen) == set(groups)
    for a, b in zip(before_out, after_out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    for key, g in groups.items():
        err = group_output_error(samples[key], [layer.get_submodule(r) for r in g.linears], [6] * len(g.linears),
                                 None, config)  # samples[key] now holds the smoothed inputs
        assert err <= none_err[key] * (1 + 1e-5)
        assert (chosen[key] is None) == (err >= none_err[key] * (1 - 1e-6))
    if outlier > 1:
        assert chosen["self_attn.q_proj"] is not None and chosen["mlp.gate_proj"] is not None
    fresh = layer_hessians(layer, spec, config, inputs)
    for key in groups:
        assert torch.allclose(fresh[key], hessians[key], rtol=1e-3, atol=1e-3 * fresh[key].abs().max().item())


def test_quantize_with_smoothing_search_records_it_and_cuts_the_output_error(tmp_path, tiny_llama, tokenizer,
                                                                              text_file):
    """On the tiny LLaMA with an outlier channel in every norm (what smoothing exists for), W6A6 with the search
    is closer to the float model than round to nearest; the manifest says what the search chose."""
    from transformers import AutoModelForCausalLM

    from flexq_cli.quantize import load_quantized

    fp = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    for layer in fp.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data[3] *= 30
    fp.save_pretrained(tmp_path / "outlier")
    tokenizer.save_pretrained(tmp_path / "outlier")
    code, _, err = run_cli("calibrate", tmp_path / "outlier", "--data", text_file, "--samples", 3, "--seqlen", 64,
                           "--out", tmp_path / "calib", "--device", "cpu")
    assert code == 0, err
    ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = fp(ids).logits
    errors = {}
    for name, fields in (("rtn", {}), ("search", {"smooth_search": True})):
        code, _, err = run_cli("quantize", tmp_path / "outlier", "--preset", _preset(tmp_path, **fields), "--calib",
                               tmp_path / "calib", "--out", tmp_path / name)
        assert code == 0, err
        model, _, manifest = load_quantized(tmp_path / name)
        with torch.no_grad():
            errors[name] = ((model(ids).logits - ref).norm() / ref.norm()).item()
    found = manifest.extra["algorithms"]["smooth_search"]
    assert set(found) == {"q_proj", "o_proj", "gate_proj", "down_proj"}
    assert found["q_proj"]["none"] == 0 and found["gate_proj"]["none"] == 0  # the outliers made it smooth
    assert errors["search"] < 0.8 * errors["rtn"], errors


DOWN = "re:.*\\.down_proj"


def test_online_rotation_options_are_checked():
    assert QuantConfig(online_rotate=[DOWN]).online_rotated("model.layers.3.mlp.down_proj")
    assert not QuantConfig(online_rotate=[DOWN]).online_rotated("model.layers.3.mlp.up_proj")
    assert QuantConfig.from_dict(QuantConfig(online_rotate=[DOWN]).to_dict()).online_rotate == (DOWN,)
    for bad in ("re:.*down", [3]):
        with pytest.raises(ValueError, match="must be a list"):
            QuantConfig(online_rotate=bad)
    with pytest.raises(FlexQError, match="online_rotate"):
        QuantConfig.from_dict({"online_rotate": ["re:("]}, "preset.yaml")
    with pytest.raises(ValueError, match="drop smooth_search"):
        QuantConfig(online_rotate=[DOWN], smooth_search=True)
    QuantConfig(online_rotate=[DOWN], smooth_alpha=0.5)  # smoothing folds before the rotation


def test_online_rotation_keeps_the_float_model_function(tmp_path, tokenizer):
    """W D offline and x D at run time (D = diag(q, q, ...), 128-wide Hadamard blocks): the same logits."""
    from conftest import make_tiny
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.rotate import online_block, rotate_inputs_online
    from flexq_cli.arch import spec_for_config
    from flexq_cli.modules import INPUT_ROTATION

    q = online_block()
    assert torch.allclose(q @ q.T, torch.eye(128, dtype=torch.float64), atol=1e-12)
    model = AutoModelForCausalLM.from_pretrained(make_tiny(tmp_path / "m", tokenizer, intermediate_size=256),
                                                 dtype=torch.float32).eval()
    down = model.model.layers[1].mlp.down_proj
    w_before = down.weight.clone()
    ids = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        before = model(ids).logits
        assert rotate_inputs_online(model, spec_for_config(model.config), QuantConfig(online_rotate=[DOWN])) == 2
        after = model(ids).logits
    assert torch.equal(getattr(down, INPUT_ROTATION), q.float())
    assert not hasattr(model.model.layers[1].mlp.up_proj, INPUT_ROTATION)
    assert not torch.allclose(w_before, down.weight, atol=1e-3)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4), (after - before).abs().max()


def test_quantize_with_online_rotation_stores_it_and_loads(tmp_path, tokenizer, text_file):
    """The rotated down_proj of the quantized directory applies the stored block to its input; without it the
    logits go far off. Bad uses are one-line errors that leave nothing behind."""
    from conftest import make_tiny
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.rotate import online_block
    from flexq_cli.quantize import load_quantized

    model_dir = make_tiny(tmp_path / "m", tokenizer, intermediate_size=256)
    code, _, err = run_cli("calibrate", model_dir, "--data", text_file, "--samples", 2, "--seqlen", 64,
                           "--out", tmp_path / "c", "--device", "cpu")
    assert code == 0, err
    preset = _preset(tmp_path, act_bits=6, rotate=True, gptq=True, weight_clip="output", online_rotate=[DOWN])
    code, _, err = run_cli("quantize", model_dir, "--preset", preset, "--calib", tmp_path / "c",
                           "--out", tmp_path / "q")
    assert code == 0, err
    model, _, manifest = load_quantized(tmp_path / "q")
    assert manifest.config["quant"]["online_rotate"] == [DOWN] and manifest.extra["algorithms"]["online_rotated"] == 2
    layer = model.model.layers[0]
    assert torch.equal(layer.mlp.down_proj.rotation, online_block().float())
    assert layer.mlp.up_proj.rotation is None and layer.self_attn.o_proj.rotation is None
    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (1, 48))
    with torch.no_grad():
        lf, lq = fp(ids).logits, model(ids).logits
        for block in model.model.layers:
            block.mlp.down_proj.rotation = None
        unrotated = model(ids).logits
    assert (lq - lf).norm() / lf.norm() < 0.1, ((lq - lf).norm() / lf.norm()).item()
    assert (unrotated - lf).norm() / lf.norm() > 2 * (lq - lf).norm() / lf.norm()

    code, _, err = run_cli("quantize", model_dir, "--preset", preset, "--calib", tmp_path / "c", "--stream",
                           "--out", tmp_path / "s")
    assert code != 0 and "not available with --stream" in err and not (tmp_path / "s").exists()
    rtn = _preset(tmp_path, act_bits=6, online_rotate=["model.layers.9.mlp.down_proj"])
    code, _, err = run_cli("quantize", model_dir, "--preset", rtn, "--out", tmp_path / "n")
    assert code != 0 and "matches no decoder linear" in err and not (tmp_path / "n").exists()


def test_online_rotation_of_a_width_not_a_multiple_of_128_is_a_one_line_error(tmp_path, tiny_llama):
    code, _, err = run_cli("quantize", tiny_llama, "--preset", _preset(tmp_path, online_rotate=[DOWN]),
                           "--out", tmp_path / "q")
    assert code != 0 and "200 input features, not a multiple of 128" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_straight_through_gradient_of_a_rotated_linear_is_exact():
    """The Fisher pass's hand-written backward: (g W) D^T for an online-rotated linear, as autograd gives it."""
    from flexq_cli.algorithms.rotate import fold_input_rotation, online_block
    from flexq_cli.fisher import _StraightThrough
    from flexq_cli.modules import SimQuantLinear
    from flexq_cli.primitives import block_rotate

    linear = torch.nn.Linear(256, 64, bias=False)
    fold_input_rotation(linear, online_block())
    sim = SimQuantLinear(linear, QuantConfig(), act_bits=None)
    x = torch.randn(5, 256, requires_grad=True)
    g = torch.randn(5, 64)
    (gx,) = torch.autograd.grad(_StraightThrough.apply(x, sim), x, g)
    x2 = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(block_rotate(x2, sim.rotation) @ sim.weight.T, x2, g)
    assert torch.allclose(gx, expected, atol=1e-5)
    assert torch.allclose(sim(x.detach()), block_rotate(x.detach(), sim.rotation) @ sim.weight.T, atol=1e-5)


def _kl(teacher, model, ids) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(ids).logits.float(), -1)
        s = torch.log_softmax(model(ids).logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean().item()


def test_norm_tuning_lowers_the_kl_and_keeps_the_codes(tmp_path, tokenizer):
    """tune_norms trains only the RMSNorm weights of the packed model, against the float model's distributions."""
    import copy

    from conftest import make_tiny
    from transformers import AutoModelForCausalLM

    from flexq_cli.algorithms.tune import norm_weights, tune_norms
    from flexq_cli.arch import spec_for_config
    from flexq_cli.modules import QuantLinear
    from flexq_cli.quantize import quantize_model

    fp = AutoModelForCausalLM.from_pretrained(make_tiny(tmp_path / "m", tokenizer), dtype=torch.float32).eval()
    spec = spec_for_config(fp.config)
    model = copy.deepcopy(fp)
    quantize_model(model, spec, QuantConfig(act_bits=6), torch.float32)
    ids = torch.randint(0, 1000, (3, 64), generator=torch.Generator().manual_seed(0))
    before, norms = _kl(fp, model, ids), [w.clone() for w in norm_weights(model, spec)]
    qweights = {n: m.qweight.clone() for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    summary = tune_norms(model, fp, spec, ids, epochs=4, lr=5e-3)
    after = _kl(fp, model, ids)
    assert after < 0.8 * before, (before, after, summary)
    assert len(summary["kl_per_epoch"]) == 4
    assert any(not torch.equal(a, b) for a, b in zip(norms, norm_weights(model, spec)))
    assert all(torch.equal(m.qweight, qweights[n]) for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert not any(p.requires_grad for p in model.parameters())


def test_quantize_with_norm_tuning_records_it_and_needs_calibration(tmp_path, tiny_llama, calib):
    from flexq_cli.quantize import load_quantized

    for bad in ({"tune_norms": -1}, {"tune_samples": 1.5}, {"tune_norms": True}):
        with pytest.raises(ValueError, match="must be an integer in 0..100"):
            QuantConfig(**bad)
    preset = _preset(tmp_path, act_bits=8, rotate=True, tune_norms=1, tune_samples=2)
    code, _, err = run_cli("quantize", tiny_llama, "--preset", preset, "--out", tmp_path / "n")
    assert code != 0 and "(tune_norms) needs calibration data" in err and not (tmp_path / "n").exists()
    code, _, err = run_cli("quantize", tiny_llama, "--preset", preset, "--calib", calib, "--out", tmp_path / "q")
    assert code == 0, err
    _, _, manifest = load_quantized(tmp_path / "q")
    algorithms = manifest.extra["algorithms"]
    assert manifest.config["quant"]["tune_norms"] == 1 and algorithms["tune_tokens"] == 2 * 64
    assert len(algorithms["tune_norms"]["kl_per_epoch"]) == 1 and "tune_seconds" in algorithms
