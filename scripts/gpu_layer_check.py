"""Debug aid on a CUDA machine: every QuantLinear of a quantized model run by the BTC kernel and by the reference
path on the same inputs (captured from one forward pass); prints the worst relative errors, then greedy
generation per prompt (batch 1, no padding) through both backends.

    python3 scripts/gpu_layer_check.py QUANTIZED_DIR
"""

from __future__ import annotations

import sys

import torch


def main() -> None:
    from flexq_cli.generate import SamplingConfig, generate_tokens
    from flexq_cli.modules import QuantLinear, set_backend
    from flexq_cli.quantize import load_quantized
    from flexq_cli.reference import reference_linear

    model, tok, _ = load_quantized(sys.argv[1], device="cuda", dtype=torch.float16, backend="btc")
    errs = []

    def hook(name):
        def check(module, args, out):
            x = args[0]
            ref = reference_linear(x, module.codes(), module.scales, act_bits=module.act_bits, bias=module.bias,
                                   act_group_size=module.act_group_size,
                                   weight_group_size=module.weight_group_size).float()
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            errs.append((rel, name, tuple(x.shape), (out.float() - ref).abs().max().item()))
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    ids = tok("In 1905, Albert Einstein published his famous paper", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    errs.sort(reverse=True)
    print("worst per-layer relative errors (btc vs reference):")
    for e in errs[:6]:
        print(f"  {e[0]:.2e}  max abs {e[3]:.3e}  {e[1]}  x{e[2]}")
    print(f"median {errs[len(errs) // 2][0]:.2e}")
    with torch.no_grad():
        lb = model(ids).logits[0, -1].float()
        set_backend(model, "reference")
        lr = model(ids).logits[0, -1].float()
    print("last-position logits: rel", ((lb - lr).norm() / lr.norm()).item(), "top2 btc", lb.topk(2), "ref", lr.topk(2))
    for prompt in ["The capital of France is", "In 1905, Albert Einstein published"]:
        p = [tok(prompt).input_ids]
        cfg = SamplingConfig(max_new_tokens=40, stop_at_eos=False)
        set_backend(model, "btc")
        a = generate_tokens(model, p, cfg, use_graph=True)["tokens"][0]
        b = generate_tokens(model, p, cfg, use_graph=False)["tokens"][0]
        set_backend(model, "reference")
        c = generate_tokens(model, p, cfg, use_graph=False)["tokens"][0]
        eq = lambda u, v: next((i for i, (x, y) in enumerate(zip(u, v)) if x != y), len(u))
        print(f"{prompt!r}: btc graph vs btc eager {eq(a, b)}/40, btc vs reference {eq(a, c)}/40")


if __name__ == "__main__":
    main()
