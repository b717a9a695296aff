"""Option aliases shared by the commands, and their parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from ..errors import FlexQError

Model = Annotated[str, typer.Argument(help="Model: HF directory, hub id, alias (configs/models.yaml) or .gguf file.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
Force = Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")]
Dtype = Annotated[str, typer.Option(help="Compute dtype of unquantized layers: auto, float32, float16, bfloat16.")]
Backend = Annotated[str, typer.Option(help="Quantized linears: auto (on CUDA the BTC or INT8 kernel by token count, reference on CPU), reference, btc, int8.")]
DeviceMapOpt = Annotated[Optional[str], typer.Option(
    "--device-map", help="Spread the model over several devices (replaces --device): auto (accelerate, over the "
    "visible GPUs, then host memory), or DEV[:LAYERS],... in layer order, DEV cpu or cuda:I, the last count "
    "optional (e.g. cuda:0:40,cpu or cuda:0:40,cuda:1). Layers on cpu beside a GPU are offloaded: weights in host "
    "memory, computed on the first GPU. Decoding runs without a CUDA graph then.")]
AttnKernel = Annotated[bool, typer.Option(
    "--attn-kernel/--no-attn-kernel", help="With --fuse on a GPU: decode steps run FlexQ's attention kernel where it "
    "pays (float32 softmax, one rounding to 16 bits; for a W6A8/W6A6 o_proj it also packs o_proj's input). "
    "--no-attn-kernel keeps transformers' attention function (SDPA), its bits, in every step.")]
Seqlen = Annotated[int, typer.Option(help="Tokens per sequence.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file.")]
Stream = Annotated[bool, typer.Option("--stream", help="One decoder layer in memory at a time, read from the "
                                      "safetensors shards: for models larger than memory; same results.")]
OffloadDir = Annotated[Optional[Path], typer.Option(help="With --stream: keep the calibration activations in this "
                                                         "directory instead of in memory.")]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FlexQError(f"--device {device} was asked for, but no CUDA GPU is visible", "use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise FlexQError(f"unknown --device '{device}'", "use cpu, cuda, cuda:N or auto")
    return device


def parse_dtype(dtype: str) -> torch.dtype | None:
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise FlexQError(f"unknown --dtype '{dtype}'", f"use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device_map_option(device_map: str | None, device: str):
    """``--device-map`` checked up front (syntax, GPUs visible); it replaces ``--device``, so both is an error."""
    from ..placement import check_cuda_devices, parse_device_map

    parsed = parse_device_map(device_map)
    if parsed is None:
        return None
    if device != "auto":
        raise FlexQError(f"--device {device} and --device-map {device_map} both say where the model goes",
                         "pass only one of them")
    if parsed.uses_cuda and not torch.cuda.is_available():
        raise FlexQError(f"--device-map {device_map} needs CUDA GPUs, and none is visible",
                         "use --device cpu, or a map of cpu only")
    check_cuda_devices(d for d, _ in parsed.entries)
    return parsed


def parse_offload_dir(stream: bool, offload_dir: Path | None) -> Path | None:
    """``--offload-dir`` checked up front: only with --stream, and a writable directory."""
    if offload_dir is None:
        return None
    if not stream:
        raise FlexQError("--offload-dir is used only with --stream", "add --stream, or drop --offload-dir")
    from ..streaming import check_offload_dir

    check_offload_dir(offload_dir, 0)
    return offload_dir


def parse_backend(backend: str) -> str:
    from ..modules import BACKENDS

    if backend not in BACKENDS:
        raise FlexQError(f"unknown --backend '{backend}'", f"use one of {', '.join(BACKENDS)}")
    return backend


def write_json(path: Path | None, payload) -> None:
    import json

    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
