"""The benches' digests (kernel_bench.summary, the tables) on made-up results: no GPU needed."""

from __future__ import annotations

from flexq_cli.kernel_bench import format_table, summary


def _rows(m, stream_fp16, stream_fp8, of_stream):
    rows = []
    for a in (6, 8):
        for kern, us in (("btc", 20.0), ("int8", 10.0)):
            rows.append({"N": 4096, "K": 4096, "M": m, "op": f"W6A{a}/{kern}", "median_us": us,
                         "dispatched": kern == "int8", "speedup_vs_fp16": 1.5, "speedup_vs_int8": 1.1,
                         "speedup_vs_fp8": 0.9, "of_stream": of_stream if kern == "int8" else 0.1})
    for op in ("fp16", "int8", "fp8"):
        rows.append({"N": 4096, "K": 4096, "M": m, "op": op, "median_us": 15.0, "speedup_vs_fp16": 1.0})
    rows.append({"N": 4096, "K": 4096, "M": m, "op": "stream", "median_us": 8.0, "speedup_vs_fp16": stream_fp16,
                 "speedup_vs_fp8": stream_fp8, "config": "4x16x256"})
    return rows


RESULT = {"device": "test", "copy_bandwidth_GBps": 1.0, "date": "today",
          "rows": _rows(1, 2.0, 1.0, 0.64) + _rows(2, 3.125, 1.44, 1.0)}


def test_summary_reports_the_stream_bound_and_the_ops_share_of_it():
    lines = summary(RESULT).splitlines()
    assert "geomean llama2-7b stream (reads the packed weights, nothing else), M<=8: 2.50x fp16, 1.20x fp8" in lines
    line = next(s for s in lines if s.startswith("geomean llama2-7b W6A8 dispatched, M<=8"))
    assert line.endswith("; 0.80 of stream's speed"), line  # the int8 rows (dispatched): geomean of 0.64 and 1.0
    assert any(s.startswith("4096 4096 1 |") and s.endswith("15.0 15.0 15.0 8.0") for s in lines)


def test_format_table_has_the_stream_column():
    table = format_table(RESULT)
    assert [c.header for c in table.columns][7] == "of_stream"
    assert table.row_count == len(RESULT["rows"])


def test_e2e_table_title_says_which_decode_attention_ran():
    from flexq_cli.e2e_bench import format_table as e2e_table

    result = {"model": "llama-2-7b", "random_init": True, "prompt_len": 128, "new_tokens": 64, "device": "test",
              "copy_bandwidth_GBps": 1.0, "date": "today", "rows": [], "skipped": []}
    assert "decode attention" not in e2e_table(result | {"decode_attention": "kernel"}).title
    assert "decode attention" not in e2e_table(result).title  # results written before the switch: the kernel ran
    title = e2e_table(result | {"decode_attention": "transformers"}).title
    assert "64 new tokens, transformers' decode attention;" in title


def test_bench_shapes_are_linears_of_the_models_they_name():
    """kernel_bench.SHAPES is written by hand: every (N, K) it lists for a model must be one of that model's linears
    (e2e_bench.SHAPES, the hub configs), separate or fused as fusion.py fuses them; the 'fused' list's entries are
    fused layers of some model there. A typo in either table fails here."""
    from flexq_cli.e2e_bench import SHAPES as CONFIGS
    from flexq_cli.kernel_bench import SHAPES

    def linears(c: dict) -> tuple[set, set]:
        h, i, heads, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
        q, k = h, h // heads * kv
        separate = {(q, h), (k, h), (h, q), (i, h), (h, i)}
        return separate, {(q + 2 * k, h), (2 * i, h)}

    names = {"llama2-7b": "llama-2-7b", "llama2-13b": "llama-2-13b", "llama2-70b": "llama-2-70b",
             "llama3-8b": "llama-3-8b", "smollm2": "smollm2-135m"}
    assert set(SHAPES) == set(names) | {"fused"}
    for bench_name, shapes in SHAPES.items():
        if bench_name == "fused":
            every_fused = set().union(*(linears(c)[1] for c in CONFIGS.values()))
            assert set(shapes) <= every_fused, set(shapes) - every_fused
        else:
            separate, fused = linears(CONFIGS[names[bench_name]])
            assert set(shapes) <= separate | fused, (bench_name, set(shapes) - separate - fused)
