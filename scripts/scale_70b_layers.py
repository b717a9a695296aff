"""Scale test of ``--stream``: calibrate and quantize decoder layers of LLaMA-2-70B's shapes on this machine.

Writes a random-init LLaMA with LLaMA-2-70B layer shapes (hidden 8192, intermediate 28672, 64 query and 8 KV
heads of 128) and only ``--layers`` decoder layers, as bfloat16 safetensors shards (one per decoder layer, one
for the embeddings, final norm and lm_head) with an index, into a temporary directory. The vocabulary is
SmolLM2's (49,152 rows, with its tokenizer) instead of LLaMA-2's 32,000: the decoder layers, not the
embeddings, are what is measured. Then runs ``flexq calibrate --stream`` and ``flexq quantize --stream`` (and
with ``--stages calibrate,analyze`` ``flexq analyze --stream``), each in its own process, and prints for each:
peak RSS (VmHWM), the size of one decoder layer in 16 bits, seconds per decoder layer (read, compute, quantize,
write, free), and the time projected to LLaMA-2-70B's 80 layers.

    nice -n 10 python scripts/scale_70b_layers.py --layers 3 --samples 2 --seqlen 128 [--json out.json]
    nice -n 10 python scripts/scale_70b_layers.py --layers 3 --samples 1 --seqlen 128 --stages calibrate,analyze
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
             max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
FULL_DEPTH = 80  # LLaMA-2-70B
LINEARS = 7  # per decoder layer


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (VmHWM: peak resident set; VmRSS: current)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_model(folder: Path, layers: int, tokenizer_dir: Path) -> dict:
    """The random-init bfloat16 checkpoint, one tensor in memory at a time. Returns the decoder-layer size."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, **SHAPE)
    config.architectures = ["LlamaForCausalLM"]
    with init_empty_weights():
        state = LlamaForCausalLM(config).state_dict()  # meta tensors: names and shapes only
    shards: dict[str, dict] = {}
    for name, t in state.items():
        key = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(key, {})[name] = t
    gen, weight_map = torch.Generator().manual_seed(0), {}
    for i, (key, tensors) in enumerate(shards.items()):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        out = {}
        for name, t in tensors.items():
            if name.endswith("norm.weight"):
                out[name] = torch.ones(t.shape, dtype=torch.bfloat16)
            else:
                out[name] = (torch.randn(t.shape, generator=gen) * 0.02).to(torch.bfloat16)
        save_file(out, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, file))
        del out
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    layer0 = [t for n, t in state.items() if n.startswith("model.layers.0.")]
    return {"layer_params": sum(t.numel() for t in layer0), "layer_bytes_16bit": sum(t.numel() * 2 for t in layer0),
            "vocab": len(tokenizer)}


def child(args: list[str]) -> None:
    """Run ``flexq ARGS`` here, timing every decoder layer's ``StreamedModel.loaded`` block; print JSON."""
    from flexq_cli import streaming
    from flexq_cli.cli.main import main

    times, loaded = [], streaming.StreamedModel.loaded

    @contextlib.contextmanager
    def timed(self, name, dtype):
        start = time.perf_counter()
        with loaded(self, name, dtype) as module:
            yield module
        if name.startswith(self.spec.layers + "."):
            times.append(time.perf_counter() - start)

    streaming.StreamedModel.loaded = timed
    baseline = status_kb("VmRSS")
    start = time.perf_counter()
    code = main(args)
    print(json.dumps({"code": code, "wall_s": time.perf_counter() - start, "layer_s": times,
                      "baseline_rss_kb": baseline, "peak_rss_kb": status_kb("VmHWM")}))


def run_stage(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if done.returncode or not done.stdout.strip():
        sys.exit(f"stage {args[0]} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"]:
        sys.exit(f"stage {args[0]} exited {result['code']}:\n{done.stderr[-3000:]}")
    return result


def report(stage: str, r: dict, sizes: dict, activations: int) -> dict:
    layer_gb, peak_gb = sizes["layer_bytes_16bit"] / 1e9, r["peak_rss_kb"] * 1024 / 1e9
    per_layer = sum(r["layer_s"]) / len(r["layer_s"])
    fixed = r["wall_s"] - sum(r["layer_s"])
    row = {"stage": stage, "peak_rss_gb": round(peak_gb, 3), "baseline_rss_gb": round(r["baseline_rss_kb"] * 1024 / 1e9, 3),
           "layer_16bit_gb": round(layer_gb, 3), "activations_gb": round(activations / 1e9, 4),
           "peak_over_layer": round(peak_gb / layer_gb, 2),
           "peak_minus_activations_over_layer": round((peak_gb - activations / 1e9) / layer_gb, 2),
           "seconds_per_layer": [round(t, 1) for t in r["layer_s"]], "mean_seconds_per_layer": round(per_layer, 1),
           "other_seconds": round(fixed, 1), "wall_s": round(r["wall_s"], 1),
           "projected_80_layers_h": round((fixed + FULL_DEPTH * per_layer) / 3600, 2)}
    print(f"{stage:9s} peak RSS {peak_gb:.2f} GB = {row['peak_over_layer']:.2f} x one layer in 16 bits "
          f"({layer_gb:.3f} GB; activations {activations / 1e9:.3f} GB); {per_layer:.1f} s per layer "
          f"({', '.join(f'{t:.1f}' for t in r['layer_s'])}), {fixed:.1f} s outside layers; 80 layers: "
          f"{row['projected_80_layers_h']:.2f} h", flush=True)
    return row


def analyze_forwards(layers: int) -> list[int]:
    """Layer forwards per sample at each decoder layer of the streamed analysis's scoring pass: the base, the
    all-A6 run, the variants begun in earlier layers, and one new variant per linear of this layer."""
    return [2 + LINEARS * (i + 1) for i in range(layers)]


def report_analyze(r: dict, sizes: dict, layers: int, activations: int) -> dict:
    """``flexq analyze --stream``: the scoring pass's layer times fitted as c + f x forwards (c: read and
    simulate the layer, f: one layer forward of all samples), the plan pass (one run) beside it, projected to
    80 layers."""
    score, plan = r["layer_s"][:layers], r["layer_s"][layers:]
    n = analyze_forwards(layers)
    f = (score[-1] - score[0]) / (n[-1] - n[0]) if layers > 1 else score[0] / n[0]
    c = score[0] - f * n[0]
    fixed = r["wall_s"] - sum(r["layer_s"])
    projected = fixed + sum(c + f * k for k in analyze_forwards(FULL_DEPTH)) + FULL_DEPTH * sum(plan) / len(plan)
    peak_gb, layer_gb = r["peak_rss_kb"] * 1024 / 1e9, sizes["layer_bytes_16bit"] / 1e9
    row = {"stage": "analyze", "peak_rss_gb": round(peak_gb, 3), "layer_16bit_gb": round(layer_gb, 3),
           "run_states_gb": round(activations / 1e9, 4), "peak_over_layer": round(peak_gb / layer_gb, 2),
           "scoring_seconds_per_layer": [round(t, 1) for t in score], "forwards_per_layer": n,
           "plan_pass_seconds_per_layer": [round(t, 1) for t in plan], "seconds_per_forward": round(f, 2),
           "seconds_per_layer_read_and_simulate": round(c, 1), "other_seconds": round(fixed, 1),
           "wall_s": round(r["wall_s"], 1), "projected_80_layers_h": round(projected / 3600, 1)}
    print(f"analyze   peak RSS {peak_gb:.2f} GB = {row['peak_over_layer']:.2f} x one layer; scoring pass "
          f"{', '.join(f'{t:.1f}' for t in score)} s per layer for {n} forwards ({f:.2f} s per forward, "
          f"{c:.1f} s read + simulate); plan pass {', '.join(f'{t:.1f}' for t in plan)} s; 80 layers: "
          f"{row['projected_80_layers_h']:.1f} h", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--preset", default="w6a8")
    p.add_argument("--stages", default="calibrate,quantize", help="comma-separated: calibrate, quantize, analyze")
    p.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    from flexq_cli.loading import gguf_converted_dir, resolve_model

    data = Path(os.environ.get("FLEXQ_DATA_DIR", "../shared/data")) / "wikitext-2-raw" / "wiki.test.raw"
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        start = time.perf_counter()
        sizes = write_model(root / "model", a.layers, gguf_converted_dir(resolve_model("smollm2-135m")))
        print(f"wrote {a.layers} layers of {sizes['layer_params'] / 1e6:.1f}M parameters "
              f"({sizes['layer_bytes_16bit'] / 1e9:.3f} GB in 16 bits) in {time.perf_counter() - start:.0f} s", flush=True)
        acts = a.samples * a.seqlen * SHAPE["hidden_size"] * 4  # float32 hidden states of every sample
        common = ["--device", "cpu", "--stream"]
        rows = [report("calibrate", run_stage(["calibrate", root / "model", "--data", data, "--samples", a.samples,
                                               "--seqlen", a.seqlen, "--out", root / "calib", *common]), sizes, acts)]
        stages = a.stages.split(",")
        if "quantize" in stages:
            rows.append(report("quantize", run_stage(["quantize", root / "model", "--preset", a.preset, "--calib",
                                                      root / "calib", "--out", root / "q", *common]), sizes, 0))
        if "analyze" in stages:
            states = (2 + LINEARS * a.layers) * acts  # the base, all A6 and one run per linear, float32
            rows.append(report_analyze(run_stage(["analyze", root / "model", "--preset", a.preset, "--calib",
                                                  root / "calib", "--samples", a.samples, "--seqlen", a.seqlen,
                                                  "--out", root / "plan", *common]), sizes, a.layers, states))
        out_gb = sum(f.stat().st_size for f in (root / "q").glob("*.safetensors")) / 1e9 if "quantize" in stages else 0
    result = {"layers": a.layers, "samples": a.samples, "seqlen": a.seqlen, "preset": a.preset, **sizes,
              "quantized_dir_gb": round(out_gb, 3), "cpus": os.cpu_count(), "stages": rows}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
