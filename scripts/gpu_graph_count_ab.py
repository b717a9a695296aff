"""How many decode graphs a generation gets: generate.graph_count's rule against MAX_GRAPHS (captures counted free),
LLaMA-2-7B random init, fused, 128-token prompt, alternating in one process, three rounds: the first step (captures),
the whole generate call, the decode rate. docs/generation.md, "How many graphs".

Usage (on the GPU, from the repository root): PYTHONPATH=. python3 scripts/gpu_graph_count_ab.py
"""
import torch
from generate_ab_common import for_each_7b_model, report, timed_generate

from flexq_cli import generate as g

torch.zeros(1, device="cuda")
PROMPT = 128
res = {"date": "", "prompt_len": PROMPT, "new_tokens": 256}
RULE = g.CAPTURE_S_PER_LAYER


def run(model, prompts, cfg, capture_s):
    return timed_generate(model, prompts, cfg, patch={"CAPTURE_S_PER_LAYER": capture_s})


def compare(name, model):
    for batch in (1, 4, 16):
        prompts = torch.randint(0, 32000, (batch, PROMPT), generator=torch.Generator().manual_seed(batch)).tolist()
        for new in (64, 256, 1024) if batch == 16 else (64, 256):
            cfg = g.SamplingConfig(max_new_tokens=new, stop_at_eos=False)
            run(model, prompts, cfg, RULE)
            out = {"8 graphs": [], "rule": []}
            for rnd in range(3):
                for label, capture_s in (("8 graphs", 0.0), ("rule", RULE)):
                    out[label].append(run(model, prompts, cfg, capture_s))
            report(f"{name} b{batch} new {new}", out, "8 graphs")


for_each_7b_model(res, compare)
