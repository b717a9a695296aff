"""The decode graphs' capture: old (two eager warm-ups per graph, shortest view first; before the 26th session)
against the landed one (one warm-up at the longest view, then the captures, longest first), LLaMA-2-7B random init,
fused, alternating in one process; then run-to-run determinism of FP16 graph decoding at batch 1 under each SDPA
backend. docs/generation.md, "What capturing the graphs costs".

Usage (on the GPU, from the repository root): PYTHONPATH=. python3 scripts/gpu_capture_ab.py
"""
import torch
from generate_ab_common import for_each_7b_model, report, timed_generate
from torch.nn.attention import SDPBackend, sdpa_kernel

from flexq_cli import generate as g

torch.zeros(1, device="cuda")
g.CAPTURE_S_PER_LAYER = 0.0  # the finest views (8 graphs here), as when this was measured: before graph_count
PROMPT = 128
res = {"date": "", "prompt_len": PROMPT, "new_tokens": 256}
new_cls = g.Decoder


class Old(new_cls):
    def _capture(self):
        pool = torch.cuda.graph_pool_handle()
        stream = g._capture_stream(torch.cuda.current_device())
        for n in sorted({self.keys_read(t) for t in range(self.t, self.cache.max_len)}):
            mask = self.mask[..., :n]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(self.ids, self.pos_ids, mask, self.slot)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.graphs[n] = (graph, self._forward(self.ids, self.pos_ids, mask, self.slot))


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a[0], b[0])):
        if x != y:
            return i
    return None


def run(model, prompts, cfg, cls):
    return timed_generate(model, prompts, cfg, patch={"Decoder": cls})


def compare(name, model):
    for batch in (1, 16):
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(0, 32000, (batch, PROMPT), generator=gen).tolist()
        for new in (64, 256):
            cfg = g.SamplingConfig(max_new_tokens=new, stop_at_eos=False)
            run(model, prompts, cfg, new_cls)
            out = {"old": [], "new": []}
            for rnd in range(3):
                for label, cls in (("old", Old), ("new", new_cls)):
                    out[label].append(run(model, prompts, cfg, cls))
            report(f"{name} b{batch} new {new}", out, "old")
    if name == "fp16":
        prompts = torch.randint(0, 32000, (1, PROMPT), generator=torch.Generator().manual_seed(1)).tolist()
        cfg = g.SamplingConfig(max_new_tokens=256, stop_at_eos=False)
        for backend in (None, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel(backend) if backend else torch.no_grad():
                    rs = [run(model, prompts, cfg, new_cls) for _ in range(4)]
                    rs.append(run(model, prompts, cfg, Old))
                    eager = g.generate_tokens(model, prompts, cfg, use_graph=False)
                print(f"fp16 b1 determinism, SDPA {backend}: first differing token vs run 0: "
                      f"{[first_diff(r['tokens'], rs[0]['tokens']) for r in rs[1:]]} (last: old capture); eager "
                      f"{first_diff(eager['tokens'], rs[0]['tokens'])}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"fp16 b1 determinism, SDPA {backend}: FAILED {type(exc).__name__}: {exc}", flush=True)


for_each_7b_model(res, compare)
