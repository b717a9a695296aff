from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import ui
from ..evaluate import EvalConfig, evaluate
from .options import (Backend, Device, DeviceMapOpt, Dtype, JsonOut, Model, Seqlen, parse_backend, parse_device,
                      parse_device_map_option, parse_dtype, write_json)


def command(
    model: Model,
    ppl: Annotated[str, typer.Option(help="wikitext2, c4, or a text file ($FLEXQ_DATA_DIR holds offline copies).")] = "wikitext2",
    seqlen: Seqlen = 2048,
    max_windows: Annotated[Optional[int], typer.Option(help="Score only the first N windows.")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 1,
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    device_map: DeviceMapOpt = None,
    json_out: JsonOut = None,
):
    """Perplexity of a full-precision or quantized model (non-overlapping windows, standard protocol)."""
    cfg = EvalConfig(data=ppl, seqlen=seqlen, max_windows=max_windows, batch_size=batch_size)
    placement = parse_device_map_option(device_map, device)
    r = evaluate(model, cfg, device=parse_device(device), dtype=parse_dtype(dtype), backend=parse_backend(backend),
                 device_map=placement)
    table = Table(title="perplexity")
    for col in ("model", "weights", "data", "seqlen", "windows", "PPL", "seconds"):
        table.add_column(col)
    table.add_row(r["model"], r["quant"], r["data"], str(r["seqlen"]), str(r["windows"]), f"{r['ppl']:.4f}",
                  f"{r['seconds']:.1f}")
    ui.out.print(table)
    write_json(json_out, r)
