"""``flexq bench --e2e``: prefill latency, the first decode step (graph capture), decode tokens/s and peak GPU memory,
FP16 against W6Ax, one harness.

Both models decode over the same static KV cache with the step captured in a CUDA graph (generate.Decoder), so
the FP16 baseline is not launch-bound; its decode rate is also reported as a fraction of its bandwidth roofline
(weights + KV cache read once per step at the copy bandwidth measured in the same run), so a weak baseline shows.
``--random-init`` builds the model from a known shape (no download): speed does not depend on weight values.
It builds each model layer by layer where it will run, the quantized one quantized linear by linear, so the
16-bit model never exists (LLaMA-2-70B W6A8 on one 80 GB GPU); a model that does not fit its GPUs is skipped
with the reason. ``--device-map`` (placement.py) spreads both models over several devices; they decode eagerly.
"""

from __future__ import annotations

import gc
import statistics
import time
from datetime import datetime, timezone

import torch

from .arch import spec_for_config
from .errors import FlexQError

# Architecture shapes as data (the hub configs of these models).
SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0),
}


def shape_config(shape: str):
    """The LlamaConfig of a known shape (SHAPES)."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise FlexQError(f"unknown shape '{shape}' for --random-init", f"use one of {', '.join(SHAPES)}")
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    return config


@torch.no_grad()
def build_random(skeleton, device_map: dict[str, str], quant=None, seed: int = 0):
    """Give the meta-device ``skeleton`` (quantize.quantized_skeleton) random weights, one module at a time on
    the device ``device_map`` keeps it on. Its QuantLinear layers (``quant`` their QuantConfig) are drawn as
    16-bit linears and quantized at once (round to nearest, in row chunks), so the memory holds the finished
    model plus one 16-bit linear, never the 16-bit model: LLaMA-2-70B W6A8 builds within one 80 GB GPU.
    Layers kept on ``cpu`` beside a GPU are drawn and quantized on the GPU, then moved."""
    from .algorithms.rotate import fold_input_rotation, online_block
    from .modules import QuantLinear, replace_module
    from .placement import storage_device
    from .streaming import quantize_linear_chunked

    torch.manual_seed(seed)
    std = skeleton.config.initializer_range
    gpus = [d for d in device_map.values() if d.startswith("cuda")]
    for name, module in list(skeleton.named_modules()):
        if not any(t.is_meta for t in module.parameters(recurse=False)) and not isinstance(module, QuantLinear):
            continue
        keep = storage_device(device_map, name)
        work = gpus[0] if keep == "cpu" and gpus else keep
        if isinstance(module, QuantLinear):
            linear = _random_linear(module.in_features, module.out_features, module.bias is not None, work, std)
            if module.rotation is not None:  # the online rotation costs time at run time: measure it too
                fold_input_rotation(linear, online_block(), name)
            replace_module(skeleton, name, quantize_linear_chunked(name, linear, quant).to(keep))
            continue
        module.to_empty(device=work, recurse=False)
        for key, p in module.named_parameters(recurse=False):
            if p.dim() > 1:
                p.normal_(0, std)
            else:  # biases 0, norm weights 1
                p.fill_(0.0 if key == "bias" else 1.0)
        module.to(keep)
    return skeleton.eval()


def _random_linear(k: int, n: int, bias: bool, device, std: float) -> torch.nn.Linear:
    linear = torch.nn.Linear(k, n, bias=bias, device=device, dtype=torch.float16)
    linear.weight.normal_(0, std)
    if bias:
        linear.bias.zero_()
    return linear


def tensor_bytes(model, device_map: dict[str, str]) -> dict[str, int]:
    """Bytes of ``model``'s tensors (real or meta) per device of ``device_map``."""
    from .placement import storage_device

    out: dict[str, int] = {}
    for name, t in model.state_dict().items():
        device = storage_device(device_map, name)
        out[device] = out.get(device, 0) + t.numel() * t.element_size()
    return out


def kv_bytes(config, batch: int, length: int, dtype_bytes: int = 2) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * length * batch * dtype_bytes


def step_bytes(model, batch: int, context: int) -> int:
    """Bytes one decode step must read: every parameter except the embedding table, plus the KV cache."""
    params = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if "embed_tokens" not in n)
    return params + kv_bytes(model.config, batch, context)


def fit_problem(model, device_map: dict[str, str], extra: int) -> str | None:
    """None when the tensors ``device_map`` puts on each GPU, plus ``extra`` bytes (KV cache, activations) on the
    first, fit that GPU's free memory; else a line saying what is missing."""
    torch.cuda.empty_cache()
    need = tensor_bytes(model, device_map)
    gpus = sorted({d for d in device_map.values() if d.startswith("cuda")})
    if not gpus:
        return "the device map puts nothing on a GPU"
    need[gpus[0]] = need.get(gpus[0], 0) + extra
    for d in gpus:
        free = torch.cuda.mem_get_info(torch.device(d))[0]
        if need[d] > free:
            return f"needs {need[d] / 1e9:.1f} GB on {d}, which has {free / 1e9:.1f} GB free"
    return None


def plan_model(shape: str, quant, device_map, extra: int):
    """(meta skeleton, module -> device map, None) for one bench model, or (None, None, why it cannot run).
    FP16 (``quant`` None) under ``--device-map auto`` may use the GPUs only: offloading it would time PCIe."""
    from .placement import available_memory, resolve
    from .quantize import quantized_skeleton

    hf_config = shape_config(shape)
    skeleton = quantized_skeleton(hf_config, quant, torch.float16)
    spec = spec_for_config(hf_config)
    if device_map is None:
        placed = {"": f"cuda:{torch.cuda.current_device()}"}
    else:
        memory = {**available_memory(), "cpu": 0} if device_map.auto and quant is None else None
        try:
            placed = resolve(skeleton, spec, device_map, memory)
        except FlexQError as exc:
            if quant is not None:
                raise
            return None, None, f"needs {sum(tensor_bytes(skeleton, {'': 'cpu'}).values()) / 1e9:.1f} GB: {exc.message}"
    why = fit_problem(skeleton, placed, extra)
    return (None, None, why) if why else (skeleton, placed, None)


def measure(model, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    """Median prefill latency, median time of the first decode step (which captures the step's CUDA graphs: ``graphs``
    of them), decode tok/s over the steps after it (best of the runs), and peak memory during generation (summed
    over the GPUs the model uses)."""
    from .generate import SamplingConfig, generate_tokens
    from .placement import cuda_indices, synchronize

    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=gen).tolist()
    cfg = SamplingConfig(max_new_tokens=new_tokens, stop_at_eos=False)
    generate_tokens(model, prompts, cfg)  # warm-up with the same shapes: kernel selection, CuPy compiles
    synchronize(model)
    gpus = cuda_indices(model)
    for i in gpus:
        torch.cuda.reset_peak_memory_stats(i)
    runs = [generate_tokens(model, prompts, cfg) for _ in range(2)]
    return {"batch": batch, "prefill_ms": round(statistics.median(r["prefill_s"] for r in runs) * 1e3, 2),
            "first_step_ms": round(statistics.median(r["first_step_s"] for r in runs) * 1e3, 2),
            "graphs": runs[0]["graphs"],
            "decode_tok_s": round(max(r["decode_tok_per_s"] for r in runs), 1),
            "peak_GiB": round(sum(torch.cuda.max_memory_allocated(i) for i in gpus) / 2**30, 2),
            "graph": runs[0]["graph"]}


def run_e2e_bench(model_name: str, *, random_init: bool, preset: str = "w6a8", batches=(1, 4, 16),
                  prompt_len: int = 128, new_tokens: int = 256, fuse: bool = True, decode_attention: bool = True,
                  device_map=None) -> dict:
    """FP16, then the quantized model; same prompts, harness and fusion for both. With ``random_init`` both are
    built layer by layer where they will run (``build_random``), and a model that does not fit is skipped
    with the reason; ``device_map`` (placement.DeviceMap) spreads them over several devices; ``decode_attention``: as
    fusion.fuse_shared_inputs'."""
    from .config import load_preset

    if not torch.cuda.is_available():
        raise FlexQError("flexq bench --e2e needs a CUDA GPU, and none is visible", "run it on an NVIDIA GPU machine")
    config = load_preset(preset)
    if random_init and config.needs_calibration:
        raise FlexQError(f"--preset {preset} needs calibration data, which a random-init model has none of",
                         "use a round-to-nearest preset (w6a8, w6a6, flexq-rtn)")
    if device_map is not None and not random_init:
        raise FlexQError("bench --e2e --device-map builds its models with --random-init",
                         "add --random-init, or run flexq generate --device-map on a quantized directory")
    from .kernel_bench import copy_bandwidth_GBps

    bw = copy_bandwidth_GBps()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": _devices(),
              "model": model_name, "random_init": random_init, "preset": preset, "prompt_len": prompt_len,
              "new_tokens": new_tokens, "fused": fuse,
              "decode_attention": "kernel" if fuse and decode_attention else "transformers",
              "device_map": str(device_map or "none"),
              "copy_bandwidth_GBps": round(bw, 1), "versions": _versions(), "rows": [], "skipped": []}
    for name, quant in (("fp16", None), (preset, config)):
        model = _bench_model(result, name, model_name, quant, random_init=random_init, fuse=fuse,
                             decode_attention=decode_attention, device_map=device_map, batch=max(batches))
        if model is not None:
            _bench_rows(result, name, model, batches, bw)
            del model
            gc.collect()  # accelerate's hooks make reference cycles: without this the FP16 model of a spread run
            torch.cuda.empty_cache()  # stayed resident while the quantized one was built and measured
    _compare(result, preset)
    return result


def _bench_model(result: dict, name: str, model_name: str, quant, *, random_init: bool, fuse: bool,
                 decode_attention: bool, device_map, batch: int):
    """The FP16 or quantized model placed and fused, or None (and a ``skipped`` entry) when it does not fit."""
    from .fusion import fuse_shared_inputs
    from .placement import dispatch

    start = time.perf_counter()
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)
    if random_init:
        length = result["prompt_len"] + result["new_tokens"]
        extra = kv_bytes(shape_config(model_name), batch, length) + (1 << 30)  # + activations and logits
        skeleton, placed, why = plan_model(model_name, quant, device_map, extra)
        if why is not None:
            result["skipped"].append({"model": name, "reason": why})
            return None
        model = build_random(skeleton, placed, quant)
    else:
        model = _load_on_gpu(model_name, quant)
        placed = None
    if fuse:
        fuse_shared_inputs(model, spec_for_config(model.config), decode_attention=decode_attention)
    if placed is not None:
        model = dispatch(model, placed)
        result.setdefault("layers_on", {})[name] = _summary(model, placed)
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)
    result.setdefault("build_s", {})[name] = round(time.perf_counter() - start, 1)
    peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    result.setdefault("build_peak_GiB", {})[name] = round(peak / 2**30, 2)  # building included: all GPUs
    torch.cuda.empty_cache()
    return model


def _load_on_gpu(model_name: str, quant):
    """A real model in FP16 on the GPU, quantized there in place when ``quant`` is given (today's path)."""
    from .loading import load_fp_model, resolve_model
    from .quantize import quantize_model

    model = load_fp_model(resolve_model(model_name), torch.float16, "cuda")[0]
    if quant is not None:
        quantize_model(model, spec_for_config(model.config), quant, torch.float16)
    return model


def _summary(model, device_map: dict[str, str]) -> dict[str, int]:
    """Decoder layers per device."""
    from .placement import storage_device

    spec = spec_for_config(model.config)
    out: dict[str, int] = {}
    for i in range(model.config.num_hidden_layers):
        device = storage_device(device_map, f"{spec.layers}.{i}")
        out[device] = out.get(device, 0) + 1
    return out


def _bench_rows(result: dict, name: str, model, batches, bw: float) -> None:
    from .placement import spread_over

    context = result["prompt_len"] + result["new_tokens"] // 2  # the mean context over the decode
    for b in batches:
        row = {"model": name, **measure(model, b, result["prompt_len"], result["new_tokens"], model.config.vocab_size)}
        if spread_over(model) is None:  # a roofline of one GPU's bandwidth means nothing for a spread model
            roofline = b * bw * 1e9 / step_bytes(model, b, context)
            row["roofline_tok_s"], row["of_roofline"] = round(roofline, 1), round(row["decode_tok_s"] / roofline, 3)
        result["rows"].append(row)


def _compare(result: dict, preset: str) -> None:
    """Speed-up and memory ratio of each quantized row against the FP16 row of its batch, when there is one."""
    fp = {r["batch"]: r for r in result["rows"] if r["model"] == "fp16"}
    for row in result["rows"]:
        base = fp.get(row["batch"]) if row["model"] == preset else None
        if base is not None:
            row["decode_speedup"] = round(row["decode_tok_s"] / base["decode_tok_s"], 2)
            row["prefill_speedup"] = round(base["prefill_ms"] / row["prefill_ms"], 2)
            row["memory_ratio"] = round(row["peak_GiB"] / base["peak_GiB"], 3)


def _devices() -> str:
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names[0] if len(set(names)) == 1 and len(names) == 1 else f"{len(names)} x {names[0]}"


def _versions() -> dict:
    import transformers

    from .artifacts import package_versions

    v = package_versions()
    v["cuda"] = torch.version.cuda
    v["transformers"] = transformers.__version__
    return v


def format_table(result: dict):
    """A rich Table of the bench result: one line per row; models skipped (they do not fit) in the caption."""
    from .ui import rows_table

    cols = ["model", "batch", "prefill_ms", "first_step_ms", "decode_tok_s", "roofline_tok_s", "of_roofline", "peak_GiB",
            "decode_speedup", "prefill_speedup", "memory_ratio"]
    init = " random-init" if result["random_init"] else ""
    spread = "" if result.get("device_map", "none") == "none" else f", --device-map {result['device_map']} (eager)"
    attn = "" if result.get("decode_attention", "kernel") == "kernel" else ", transformers' decode attention"
    table = rows_table(f"{result['model']}{init}, prompt {result['prompt_len']}, {result['new_tokens']} new tokens"
                       f"{attn}; {result['device']}, copy {result['copy_bandwidth_GBps']} GB/s{spread}, "
                       f"{result['date']}",
                       cols, result["rows"])
    table.caption = "; ".join(f"{s['model']}: skipped, {s['reason']}" for s in result.get("skipped", [])) or None
    return table
