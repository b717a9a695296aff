"""On a CUDA machine: the quantized SmolLM2 through the BTC kernel against the reference path, same GPU.

    python3 scripts/gpu_smollm2_check.py QUANTIZED_DIR [--windows 40] [--json OUT.json]

1. Greedy generation: BTC kernel with the CUDA-graph decode step vs. the pure-PyTorch reference path (eager),
   token ids compared position by position for each prompt.
2. WikiText-2 perplexity (the eval protocol, --seqlen 2048) through both backends; the difference is reported.
Unquantized layers run in float16 in both, so the difference is the kernel's alone.
"""

from __future__ import annotations

import argparse
import json

import torch

PROMPTS = ["The capital of France is", "In 1905, Albert Einstein published", "def fibonacci(n):",
           "The best way to learn a new language is"]


def main() -> None:
    from flexq_cli.data import eval_windows, load_text, tokenize
    from flexq_cli.evaluate import perplexity
    from flexq_cli.generate import SamplingConfig, generate_tokens
    from flexq_cli.modules import set_backend
    from flexq_cli.quantize import load_quantized

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--json")
    args = ap.parse_args()
    model, tok, _ = load_quantized(args.model, device="cuda", dtype=torch.float16, backend="btc")
    prompts = [tok(p).input_ids for p in PROMPTS]
    cfg = SamplingConfig(max_new_tokens=args.tokens, stop_at_eos=False)
    result = {"prompts": []}
    btc = generate_tokens(model, prompts, cfg, use_graph=True)
    windows = eval_windows(tokenize(tok, load_text("wikitext2", "test")), 2048, args.windows)
    result["ppl_btc"] = perplexity(model, windows)[0]
    set_backend(model, "reference")
    ref = generate_tokens(model, prompts, cfg, use_graph=False)
    result["ppl_reference"] = perplexity(model, windows)[0]
    for text, a, b in zip(PROMPTS, btc["tokens"], ref["tokens"]):
        first_diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        result["prompts"].append({"prompt": text, "equal_prefix": first_diff, "btc": tok.decode(a),
                                  "reference": tok.decode(b)})
        print(f"{text!r}: {first_diff}/{len(a)} tokens equal | {tok.decode(a)[:80]!r}")
    result["windows"] = int(windows.shape[0])
    print(f"PPL ({result['windows']} x 2048): btc {result['ppl_btc']:.4f}  reference {result['ppl_reference']:.4f}  "
          f"diff {result['ppl_btc'] - result['ppl_reference']:+.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
