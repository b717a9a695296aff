"""Measured per-layer quantization time of a LLaMA-2-7B-shaped decoder layer on one GPU, for the 7B projection of
docs/accuracy.md: a random-init model with the 7B layer shape and 2 decoder layers, float32 (as flexq quantize
computes), calibration samples of 2048 random tokens; ``algorithms.sequential.quantize_sequential`` (Hessians,
weight algorithm, propagation) timed per config and sample count. Random weights make the algorithms' work, not
their accuracy, representative.

    python3 scripts/gpu_quantize_time.py
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from flexq_cli.algorithms.sequential import quantize_sequential
    from flexq_cli.arch import spec_for_config
    from flexq_cli.config import QuantConfig
    from flexq_cli.modules import SimQuantLinear

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).float().eval()
    spec = spec_for_config(model.config)
    configs = {"rtn": QuantConfig(act_bits=8), "clip-output": QuantConfig(act_bits=8, weight_clip="output"),
               "gptq": QuantConfig(act_bits=8, gptq=True)}
    for samples in (4, 32):
        ids = torch.randint(0, cfg.vocab_size, (samples, 2048))
        for name, qc in configs.items():
            fresh = LlamaForCausalLM(cfg).float().eval().cuda() if name != "rtn" or samples != 4 else model
            torch.cuda.synchronize()
            start = time.perf_counter()
            quantize_sequential(fresh, spec, qc, ids, lambda n, lin, c, s, qc=qc: SimQuantLinear(lin, qc, 8, c, s))
            torch.cuda.synchronize()
            per_layer = (time.perf_counter() - start) / cfg.num_hidden_layers
            print(f"{name:12s} {samples:3d} x 2048 tokens: {per_layer:.2f} s per 7B layer "
                  f"(x32 layers: {per_layer * 32 / 60:.1f} min)", flush=True)
            del fresh
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
