"""How many decode graphs a generation gets: generate.graph_count's rule against MAX_GRAPHS (captures counted free),
LLaMA-2-7B random init, fused, 128-token prompt, alternating in one process, three rounds: the first step (captures),
the whole generate call, the decode rate. docs/generation.md, "How many graphs".

Usage (on the GPU, from the repository root): PYTHONPATH=. python3 scripts/gpu_graph_count_ab.py
"""
import gc
import time

import torch

from flexq_cli import e2e_bench as eb
from flexq_cli import generate as g
from flexq_cli.config import load_preset

torch.zeros(1, device="cuda")
PROMPT = 128
res = {"date": "", "prompt_len": PROMPT, "new_tokens": 256}
RULE = g.CAPTURE_S_PER_LAYER


def run(model, prompts, cfg, capture_s):
    g.CAPTURE_S_PER_LAYER = capture_s
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = g.generate_tokens(model, prompts, cfg)
    torch.cuda.synchronize()
    r["wall"] = time.perf_counter() - t0
    g.CAPTURE_S_PER_LAYER = RULE
    return r


for name in ("w6a8", "fp16"):
    quant = None if name == "fp16" else load_preset(name)
    model = eb._bench_model(res, name, "llama-2-7b", quant, random_init=True, fuse=True, decode_attention=True,
                            device_map=None, batch=16)
    for batch in (1, 4, 16):
        prompts = torch.randint(0, 32000, (batch, PROMPT), generator=torch.Generator().manual_seed(batch)).tolist()
        for new in (64, 256, 1024) if batch == 16 else (64, 256):
            cfg = g.SamplingConfig(max_new_tokens=new, stop_at_eos=False)
            run(model, prompts, cfg, RULE)
            out = {"8 graphs": [], "rule": []}
            for rnd in range(3):
                for label, capture_s in (("8 graphs", 0.0), ("rule", RULE)):
                    out[label].append(run(model, prompts, cfg, capture_s))
            for label, rs in out.items():
                fs = sorted(r["first_step_s"] * 1e3 for r in rs)
                ws = sorted(r["wall"] * 1e3 for r in rs)
                rate = sorted(r["decode_tok_per_s"] for r in rs)
                same = [r["tokens"] == out["8 graphs"][0]["tokens"] for r in rs]
                print(f"{name} b{batch} new {new} {label}: {rs[0]['graphs']} graphs, first step {fs[0]:.1f}-{fs[-1]:.1f} "
                      f"ms, wall {ws[0]:.1f}-{ws[-1]:.1f} ms, decode {rate[0]:.1f}-{rate[-1]:.1f} tok/s; tokens as "
                      f"8 graphs' first: {same}", flush=True)
    model = None
    gc.collect()
    torch.cuda.empty_cache()
