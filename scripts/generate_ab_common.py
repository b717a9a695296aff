"""Shared by the generation A/B scripts (gpu_capture_ab.py, gpu_graph_count_ab.py): one timed generate call, and the
ranges of a comparison's rounds."""
import time

import torch

from flexq_cli import generate as g


def timed_generate(model, prompts, cfg, patch: dict | None = None, **kwargs) -> dict:
    """generate_tokens' result with ``wall``: the whole call, synchronized on both ends. ``patch``: attributes of
    flexq_cli.generate set for this call only (Decoder, CAPTURE_S_PER_LAYER, ...)."""
    saved = {name: getattr(g, name) for name in patch or {}}
    for name, value in (patch or {}).items():
        setattr(g, name, value)
    try:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = g.generate_tokens(model, prompts, cfg, **kwargs)
        torch.cuda.synchronize()
        r["wall"] = time.perf_counter() - t0
        return r
    finally:
        for name, value in saved.items():
            setattr(g, name, value)


def report(prefix: str, out: dict[str, list[dict]], reference: str) -> None:
    """One line per label: graphs, first step, whole call and decode rate as min-max over the rounds, and whether
    each round's tokens equal the first round of ``reference``."""
    for label, rs in out.items():
        fs = sorted(r["first_step_s"] * 1e3 for r in rs)
        ws = sorted(r["wall"] * 1e3 for r in rs)
        rate = sorted(r["decode_tok_per_s"] for r in rs)
        same = [r["tokens"] == out[reference][0]["tokens"] for r in rs]
        print(f"{prefix} {label}: {rs[0]['graphs']} graphs, first step {fs[0]:.1f}-{fs[-1]:.1f} ms, wall "
              f"{ws[0]:.1f}-{ws[-1]:.1f} ms, decode {rate[0]:.1f}-{rate[-1]:.1f} tok/s, prefill "
              f"{rs[0]['prefill_s'] * 1e3:.1f}; tokens as {reference}'s first: {same}", flush=True)


def for_each_7b_model(res: dict, work, batch: int = 16) -> None:
    """``work(name, model)`` for LLaMA-2-7B random init, fused, W6A8 then FP16 (built by ``flexq bench --e2e``'s own
    builder, sized for ``batch``), each freed before the next is built."""
    import gc

    from flexq_cli import e2e_bench as eb
    from flexq_cli.config import load_preset

    for name in ("w6a8", "fp16"):
        quant = None if name == "fp16" else load_preset(name)
        model = eb._bench_model(res, name, "llama-2-7b", quant, random_init=True, fuse=True, decode_attention=True,
                                device_map=None, batch=batch)
        work(name, model)
        del model
        gc.collect()
        torch.cuda.empty_cache()
