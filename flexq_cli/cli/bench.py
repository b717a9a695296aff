from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import ui
from ..errors import FlexQError
from .options import AttnKernel, DeviceMapOpt, JsonOut, parse_device_map_option, write_json


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise FlexQError(f"'{text}' is not a comma-separated list of positive integers", "e.g. 1,2,4,8")
    return values


def command(
    kernel: Annotated[bool, typer.Option("--kernel", help="Time the W6A6/W6A8 layer ops (BTC and INT8 kernels, and which one dispatch picks) against cuBLAS fp16/int8/fp8 and a read-only memory roofline.")] = False,
    e2e: Annotated[Optional[str], typer.Option("--e2e", help="End to end: a model, or with --random-init a shape (llama-2-7b, llama-2-13b, llama-3-8b, llama-2-70b, smollm2-135m).")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Build the --e2e model from its shape with random weights.")] = False,
    preset: Annotated[str, typer.Option(help="--e2e: quantization preset of the quantized model.")] = "w6a8",
    batches: Annotated[str, typer.Option(help="--e2e: batch sizes, comma-separated.")] = "1,4,16",
    prompt_len: Annotated[int, typer.Option(help="--e2e: prompt tokens.")] = 128,
    new_tokens: Annotated[int, typer.Option(help="--e2e: generated tokens.")] = 256,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="--e2e: one GEMM for q/k/v and one for gate/up; RMSNorm, SiLU, and rotary + cache write one kernel each (both models).")] = True,
    attn_kernel: AttnKernel = True,
    device_map: DeviceMapOpt = None,
    models: Annotated[str, typer.Option(help="Comma-separated shape sets: llama2-7b, llama2-13b, llama2-70b, llama3-8b, smollm2, fused, all.")] = "llama2-7b,llama2-70b",
    m: Annotated[str, typer.Option("--m", help="Token counts M, comma-separated.")] = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096",
    repeats: Annotated[int, typer.Option(help="Timed repeats per op (median reported).")] = 50,
    flush_l2: Annotated[bool, typer.Option(help="Flush L2 before each timed run by reading a 256 MB buffer (weights come from HBM, as in decode).")] = True,
    back_to_back: Annotated[bool, typer.Option(help="Also time back-to-back runs on the same buffers (FlexQ's method).")] = False,
    json_out: JsonOut = None,
):
    """GPU benchmarks: --kernel (the W6 layer ops vs cuBLAS) or --e2e (generation, FP16 vs quantized)."""
    if kernel == (e2e is not None):
        raise FlexQError("say what to benchmark: exactly one of --kernel and --e2e",
                         "flexq bench --kernel, or flexq bench --e2e llama-2-7b --random-init")
    import torch

    if device_map is not None and e2e is None:
        raise FlexQError("--device-map is an --e2e option", "drop it, or benchmark with --e2e")
    if e2e is not None:
        from ..e2e_bench import format_table as e2e_table
        from ..e2e_bench import run_e2e_bench

        result = run_e2e_bench(e2e, random_init=random_init, preset=preset, batches=tuple(_ints(batches)),
                               prompt_len=prompt_len, new_tokens=new_tokens, fuse=fuse, decode_attention=attn_kernel,
                               device_map=parse_device_map_option(device_map, "auto"))
        ui.out.print(e2e_table(result))
        write_json(json_out, result)
        return

    if not torch.cuda.is_available():
        raise FlexQError("flexq bench --kernel needs a CUDA GPU, and none is visible", "run it on an NVIDIA GPU machine")
    from ..kernel_bench import SHAPES, format_table, run_kernel_bench, summary

    names = list(SHAPES) if models == "all" else [s.strip() for s in models.split(",") if s.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise FlexQError(f"unknown shape set(s) {', '.join(unknown)}", f"use {', '.join(SHAPES)} or all")
    shapes = list(dict.fromkeys(s for n in names for s in SHAPES[n]))
    result = run_kernel_bench(shapes, _ints(m), repeats=repeats, flush_l2=flush_l2, back_to_back=back_to_back)
    ui.out.print(format_table(result))
    ui.out.print(summary(result))
    write_json(json_out, result)
