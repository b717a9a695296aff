from __future__ import annotations

from typing import Annotated

import typer

from .. import ui
from ..generate import SamplingConfig, generate_tokens
from .options import (AttnKernel, Backend, Device, DeviceMapOpt, Dtype, Model, parse_backend, parse_device,
                      parse_device_map_option, parse_dtype)

_D = SamplingConfig()


def command(
    model: Model,
    prompt: Annotated[list[str], typer.Option(help="Prompt text; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = _D.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = _D.temperature,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0: all).")] = _D.top_k,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = _D.top_p,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = _D.seed,
    graph: Annotated[bool, typer.Option("--graph/--no-graph", help="Capture the decode step in a CUDA graph.")] = True,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="One GEMM for q/k/v and one for gate/up; RMSNorm and SiLU one kernel each, packing for the next GEMM; rotary + cache write one kernel (docs/generation.md).")] = True,
    attn_kernel: AttnKernel = True,
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    device_map: DeviceMapOpt = None,
):
    """Generate text from a full-precision or quantized model (static KV cache; CUDA graph on GPUs)."""
    from ..evaluate import load_for_eval

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed)
    placement = parse_device_map_option(device_map, device)
    net, tokenizer, _ = load_for_eval(model, parse_device(device), parse_dtype(dtype), parse_backend(backend),
                                      placement, fuse, attn_kernel)
    ids = [tokenizer(p).input_ids for p in prompt]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    r = generate_tokens(net, ids, cfg, eos_id=tokenizer.eos_token_id, use_graph=graph, pad_id=pad)
    if r["eager_reason"]:
        ui.err.print(f"note: decoding eagerly, without a CUDA graph: {r['eager_reason']}", highlight=False, markup=False)
    for text, tokens in zip(prompt, r["tokens"]):
        ui.out.print(text + tokenizer.decode(tokens, skip_special_tokens=True), highlight=False, markup=False)
    first = f", first step {r['first_step_s'] * 1e3:.1f} ms" if r["decode_steps"] else ""
    if r["graphs"]:
        first += f" (captured {r['graphs']} CUDA graph{'s' if r['graphs'] > 1 else ''})"
    ui.err.print(f"prefill {r['prefill_s'] * 1e3:.1f} ms{first}, decode {r['decode_tok_per_s']:.1f} tok/s "
                 f"({len(prompt)} x {r['decode_steps']} steps{', CUDA graph' if r['graph'] else ''})")
