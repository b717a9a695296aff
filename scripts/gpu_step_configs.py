"""Tile configs tried inside the decode step: the W6A8 (or $PRESET) CUDA-graph step of a random-init model at
batch B, with the tuned tables (btc_tuning.TUNED, int8_kernel.GEMV_TUNED, dispatch.CROSSOVER) overridden for one
or more GEMM shapes per variant.

kernel_bench's --tune times each layer alone, L2 flushed, launched after nothing. In the decode step a GEMM is
launched with programmatic dependent launch behind the norm, SiLU or pack kernel that feeds it, and prefetches its
first BTC_STAGES - 1 stages of weights while that kernel runs; which config is best can differ there
(docs/kernel.md, "Tuned inside the decode step"). Each variant captures the step's graph again and reports the mean
replay time (CUDA events, back to back) and the layer's quantized GEMM times (torch.profiler, mean of the decoder
layers), in rounds so that the spread between runs of the same variant shows. A warm-up of ~10 s of replays comes
first: without it the first variant measured ~100 us faster than its own later rounds (2026-11-22, H100; why was
not measured, clocks not yet settled is the guess).
Usage: python scripts/gpu_step_configs.py [SHAPE] [BATCH] [ROUNDS] [VARIANT ...]
  VARIANT: parts joined by ";", each one of
    N:K[:A6]=warps,kb,stages,splits[,mt]  the BTC config for the batch's M bucket (btc_tuning.m_bucket), A8 unless
                                          :A6, mt 8 unless given; e.g. 4096:11008=4,4,3,4
    gv:N:K=kw,rt,ring                     the register-fed INT8 kernel's config (GEMV_TUNED) for the batch's token
                                          tiles; e.g. gv:4096:11008=4,1,4
    ring=R                                every register-fed config the rule picks gets a ring of R blocks
    x:N:K[:A6]=M0                         INT8 from M0 tokens on that shape (dispatch.CROSSOVER); e.g. x:12288:4096=1
    norm=one|split                        the RMSNorm as one CTA per token or split over CTAs, whatever its pack
                                          (norm_kernel.SPLIT_PACKS)
  With no VARIANT: the table as it is, then each TUNE_CANDIDATE for the 7B down_proj shape.
PRESET=w6a6 in the environment times that preset's model (default w6a8; variants then name N:K:A6), PRESET=fp16 the
FP16 model (only norm= variants then mean anything).
Results as JSON to $OUT/step-configs-<shape>-b<B>.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch
from gpu_decode_profile import build, graph_decoder, replay_us  # scripts/ is on sys.path when run as a script
from gpu_step_timeline import is_gemm, layer_table, step_kernels

from flexq_cli import btc, btc_tuning, dispatch, int8_kernel, norm_kernel
from flexq_cli.config import load_preset
from flexq_cli.kernel_bench import TUNE_CANDIDATES


def parse_variant(text: str, batch: int) -> dict:
    """A VARIANT -> {"btc": TUNED overrides, "gemv": GEMV_TUNED overrides, "ring": R or 0, "cross": CROSSOVER
    overrides, "norm": "one", "split" or None}."""
    over = {"btc": {}, "gemv": {}, "ring": 0, "cross": {}, "norm": None}
    for part in text.split(";"):
        shape, cfg = part.split("=")
        if shape == "norm":
            over["norm"] = cfg
            continue
        dims = shape.split(":")
        vals = [int(v) for v in cfg.split(",")]
        if shape == "ring":
            over["ring"] = vals[0]
            continue
        kind = dims.pop(0) if dims[0] in ("gv", "x") else "btc"
        bits = 6 if len(dims) > 2 and dims[2].upper() == "A6" else 8
        n, k = int(dims[0]), int(dims[1])
        if kind == "gv":
            over["gemv"][(n, k, 1 if batch <= 8 else 2)] = tuple(vals[:3])
        elif kind == "x":
            over["cross"][(n, k, bits)] = vals[0]
        else:
            warps, kb, stages, splits = vals[:4]
            mt = vals[4] if len(vals) > 4 else 8
            over["btc"][(n, k, btc_tuning.m_bucket(batch), bits)] = (warps, kb, stages, mt, splits)
    return over


def apply(over: dict, base: dict) -> None:
    """The tables as ``base`` holds them (their contents at the start), with ``over`` on top; chosen configs are
    cached per launch shape, so the caches are cleared."""
    for table, name in ((btc_tuning.TUNED, "btc"), (int8_kernel.GEMV_TUNED, "gemv"), (dispatch.CROSSOVER, "cross")):
        table.clear()
        table.update({**base[name], **over.get(name, {})})
    ring = over.get("ring", 0)
    int8_kernel.gemv_config = (lambda m, n, kp: dataclasses.replace(base["rule"](m, n, kp), ring=ring)) if ring \
        else base["rule"]
    btc.choose_config.cache_clear()
    int8_kernel.default_config.cache_clear()
    norm_kernel.SPLIT_PACKS.clear()
    norm_kernel.SPLIT_PACKS.update({"one": set(), "split": set(norm_kernel.PACKS)}.get(over.get("norm"),
                                                                                    base["split_packs"]))


def main():
    args = sys.argv[1:]
    shape = args[0] if args else "llama-2-7b"
    batch = int(args[1]) if len(args) > 1 else 1
    rounds = int(args[2]) if len(args) > 2 else 2
    variants = {"table": {}}
    for text in args[3:]:
        variants[text] = parse_variant(text, batch)
    if len(args) <= 3:
        for w, kb, st in TUNE_CANDIDATES:
            text = f"4096:11008={w},{kb},{st},4"
            variants[text] = parse_variant(text, batch)
    preset = os.environ.get("PRESET", "w6a8")
    model, why = build(shape, None if preset == "fp16" else load_preset(preset))
    if why:
        raise SystemExit(f"{shape}: {why}")
    base = {"btc": dict(btc_tuning.TUNED), "gemv": dict(int8_kernel.GEMV_TUNED), "cross": dict(dispatch.CROSSOVER),
            "rule": int8_kernel.gemv_config, "split_packs": set(norm_kernel.SPLIT_PACKS)}
    out = {"shape": shape, "batch": batch, "preset": preset, "device": torch.cuda.get_device_name(), "runs": []}
    warm = graph_decoder(model, batch)
    replay_us(warm, 3000)  # clocks and temperature settle before anything is recorded
    del warm
    try:
        for rnd in range(rounds):
            for name, over in variants.items():
                apply(over, base)
                dec = graph_decoder(model, batch)
                step = replay_us(dec, 200)
                gemms = [r["us"] for r in layer_table(step_kernels(dec)[1])["rows"] if is_gemm(r["name"])]
                out["runs"].append({"round": rnd, "variant": name, "step_us": round(step, 1), "gemm_us": gemms})
                print(f"{name:40s} step {step:8.1f} us | layer GEMMs " + " ".join(f"{g:6.2f}" for g in gemms),
                      flush=True)
                del dec
                torch.cuda.empty_cache()
    finally:
        apply({}, base)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"step-configs-{shape}-b{batch}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
