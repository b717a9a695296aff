"""``flexq bench --e2e``: prefill latency, decode tokens/s and peak GPU memory, FP16 against W6Ax, one harness.

Both models decode over the same static KV cache with the step captured in a CUDA graph (generate.Decoder), so
the FP16 baseline is not launch-bound; its decode rate is also reported as a fraction of its bandwidth roofline
(weights + KV cache read once per step at the copy bandwidth measured in the same run), so a weak baseline shows.
``--random-init`` builds the model from a known shape (no download): speed does not depend on weight values.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

import torch

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
}


def random_model(shape: str, dtype=torch.float16, device="cuda"):
    """A random-init LlamaForCausalLM of a known shape, built directly on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise FlexQError(f"unknown shape '{shape}' for --random-init", f"use one of {', '.join(SHAPES)}")
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def step_bytes(model, batch: int, context: int) -> int:
    """Bytes one decode step must read: every parameter except the embedding table, plus the KV cache."""
    params = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if "embed_tokens" not in n)
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * context * batch * 2
    return params + kv


def measure(model, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    """Median prefill latency, decode tok/s over ``new_tokens`` steps, and peak memory during generation."""
    from .generate import SamplingConfig, generate_tokens

    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=gen).tolist()
    cfg = SamplingConfig(max_new_tokens=new_tokens, stop_at_eos=False)
    generate_tokens(model, prompts, cfg)  # warm-up with the same shapes: kernel selection, CuPy compiles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    runs = [generate_tokens(model, prompts, cfg) for _ in range(2)]
    return {"batch": batch, "prefill_ms": round(statistics.median(r["prefill_s"] for r in runs) * 1e3, 2),
            "decode_tok_s": round(max(r["decode_tok_per_s"] for r in runs), 1),
            "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def run_e2e_bench(model_name: str, *, random_init: bool, preset: str = "w6a8", batches=(1, 4, 16),
                  prompt_len: int = 128, new_tokens: int = 256, fuse: bool = True) -> dict:
    """FP16, then a fresh copy quantized in place on the GPU; same prompts, harness and fusion for both."""
    from .arch import spec_for_config
    from .config import load_preset
    from .fusion import fuse_shared_inputs
    from .loading import load_fp_model, resolve_model
    from .quantize import quantize_model

    if not torch.cuda.is_available():
        raise FlexQError("flexq bench --e2e needs a CUDA GPU, and none is visible", "run it on an NVIDIA GPU machine")
    config = load_preset(preset)
    build = (lambda: random_model(model_name)) if random_init else (
        lambda: load_fp_model(resolve_model(model_name), torch.float16, "cuda")[0])
    from .kernel_bench import copy_bandwidth_GBps

    bw = copy_bandwidth_GBps()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(),
              "model": model_name, "random_init": random_init, "preset": preset, "prompt_len": prompt_len,
              "new_tokens": new_tokens, "fused": fuse, "copy_bandwidth_GBps": round(bw, 1),
              "versions": _versions(), "rows": []}
    context = prompt_len + new_tokens // 2  # the mean context over the decode
    for name in ("fp16", preset):
        model = build()
        spec = spec_for_config(model.config)
        if name != "fp16":
            start = time.perf_counter()
            quantize_model(model, spec, config, torch.float16)
            torch.cuda.synchronize()
            result["quantize_s"] = round(time.perf_counter() - start, 1)
        if fuse:
            fuse_shared_inputs(model, spec)
        torch.cuda.empty_cache()
        for b in batches:
            row = {"model": name, **measure(model, b, prompt_len, new_tokens, model.config.vocab_size)}
            roofline = b * bw * 1e9 / step_bytes(model, b, context)
            row["roofline_tok_s"], row["of_roofline"] = round(roofline, 1), round(row["decode_tok_s"] / roofline, 3)
            result["rows"].append(row)
        del model
        torch.cuda.empty_cache()
    for row in result["rows"][len(batches):]:
        fp = next(r for r in result["rows"] if r["model"] == "fp16" and r["batch"] == row["batch"])
        row["decode_speedup"] = round(row["decode_tok_s"] / fp["decode_tok_s"], 2)
        row["prefill_speedup"] = round(fp["prefill_ms"] / row["prefill_ms"], 2)
        row["memory_ratio"] = round(row["peak_GiB"] / fp["peak_GiB"], 3)
    return result


def _versions() -> dict:
    import transformers

    from .artifacts import package_versions

    v = package_versions()
    v["cuda"] = torch.version.cuda
    v["transformers"] = transformers.__version__
    return v


def format_table(result: dict):
    """A rich Table of the bench result: one line per row."""
    from .ui import rows_table

    cols = ["model", "batch", "prefill_ms", "decode_tok_s", "roofline_tok_s", "of_roofline", "peak_GiB", "decode_speedup",
            "prefill_speedup", "memory_ratio"]
    return rows_table(f"{result['model']}{' random-init' if result['random_init'] else ''}, prompt {result['prompt_len']}, {result['new_tokens']} new tokens; "
                    f"{result['device']}, copy {result['copy_bandwidth_GBps']} GB/s, {result['date']}", cols, result["rows"])
