"""``--stream``: calibrate and quantize one decoder layer at a time give the full-model path's artifacts, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from flexq_cli import streaming

GPTQ_SMOOTH = "act_bits: 6\ngptq: true\ngptq_act_order: true\nweight_clip: mse\nsmooth_alpha: 0.5\n"
SEARCH = "act_bits: 6\nsmooth_search: true\nweight_clip: output\n"


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_artifact(a: Path, b: Path) -> None:
    """Same files, same tensors bit for bit, same config and index."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    assert not [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    for name in ("config.json", "model.safetensors.index.json"):
        if (a / name).is_file():
            assert (a / name).read_text() == (b / name).read_text()


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory, tiny_llama) -> Path:
    """The tiny LLaMA re-saved as several safetensors shards with an index (as large checkpoints come)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("sharded") / "llama"
    AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(path, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(path)
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def calib_dirs(tmp_path_factory, sharded_llama, text_file):
    """Full-model and streamed calibration of the sharded tiny LLaMA (the streamed one through the CLI)."""
    root = tmp_path_factory.mktemp("stream-calib")
    args = ("calibrate", sharded_llama, "--data", text_file, "--samples", 3, "--seqlen", 64, "--device", "cpu")
    for name, extra in (("full", ()), ("stream", ("--stream",))):
        code, _, err = run_cli(*args, "--out", root / name, *extra)
        assert code == 0, err
    return root


def test_streamed_calibration_statistics_are_bit_identical(calib_dirs):
    from flexq_cli.calibrate import load_calibration

    (ma, a), (mb, b) = load_calibration(calib_dirs / "full"), load_calibration(calib_dirs / "stream")
    assert a.keys() == b.keys() and ma.extra == mb.extra
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_offloaded_calibration_is_bit_identical_and_cleans_up(calib_dirs, sharded_llama, text_file, tmp_path):
    from flexq_cli.calibrate import load_calibration

    offload = tmp_path / "acts"
    offload.mkdir()
    code, _, err = run_cli("calibrate", sharded_llama, "--data", text_file, "--samples", 3, "--seqlen", 64,
                           "--device", "cpu", "--out", tmp_path / "c", "--stream", "--offload-dir", offload)
    assert code == 0, err
    _, a = load_calibration(calib_dirs / "full")
    _, b = load_calibration(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(offload.iterdir())


@pytest.mark.parametrize("preset", ["w6a8", "flexq-stream", "gptq-smooth", "search"])
def test_streamed_quantize_is_bit_identical(preset, calib_dirs, sharded_llama, tmp_path, monkeypatch):
    """Round to nearest (packed in many row chunks), smoothing + output clip search, GPTQ with act-order and
    smoothing, the smoothing search + output clip; the output sharded into several files."""
    from flexq_cli.quantize import quantize

    monkeypatch.setattr(streaming, "ROW_CHUNK_ELEMENTS", 3000)  # ~20 rows per chunk: several per linear
    if preset in ("gptq-smooth", "search"):
        text = GPTQ_SMOOTH if preset == "gptq-smooth" else SEARCH
        preset = str(tmp_path / "algo.yaml")
        Path(preset).write_text(text)
    kw = dict(preset=preset, calib=calib_dirs / "full", max_shard_bytes=150_000)
    quantize(str(sharded_llama), tmp_path / "full", **kw)
    quantize(str(sharded_llama), tmp_path / "stream", stream=True, **kw)
    assert (tmp_path / "stream" / "model.safetensors.index.json").is_file()
    assert_same_artifact(tmp_path / "full", tmp_path / "stream")


def test_streamed_gptq_with_offload_loads_and_matches(calib_dirs, sharded_llama, tmp_path):
    from flexq_cli.quantize import load_quantized

    (tmp_path / "gptq.yaml").write_text(GPTQ_SMOOTH)
    (tmp_path / "acts").mkdir()
    base = ("quantize", sharded_llama, "--preset", tmp_path / "gptq.yaml", "--calib", calib_dirs / "full")
    code, _, err = run_cli(*base, "--out", tmp_path / "full")
    assert code == 0, err
    code, out, err = run_cli(*base, "--out", tmp_path / "stream", "--stream", "--offload-dir", tmp_path / "acts")
    assert code == 0, err
    assert_same_artifact(tmp_path / "full", tmp_path / "stream")
    model, _, manifest = load_quantized(tmp_path / "stream")  # digests checked on load
    assert manifest.extra["algorithms"]["stream"] == {"offload": True}
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 1000, (1, 16))).logits).all()


@pytest.mark.parametrize("args, message", [
    (("--stream", "--offload-dir", "MISSING"), "--offload-dir"),
    (("--offload-dir", "."), "only with --stream"),
])
def test_bad_offload_dir_is_one_line(args, message, tiny_llama, tmp_path):
    args = tuple(str(tmp_path / "nope") if a == "MISSING" else a for a in args)
    code, _, err = run_cli("quantize", tiny_llama, "--out", tmp_path / "q", *args)
    assert code == 1 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("flexq: error:")
    assert not (tmp_path / "q").exists()


def _plan(folder: Path):
    from flexq_cli.analyze import load_plan

    manifest, tensors = load_plan(folder / "plan.safetensors")
    return manifest, tensors, (folder / "plan.md").read_text()


@pytest.mark.parametrize("preset, offload", [("w6a8", False), ("w6a8", True), ("flexq-stream", False),
                                             ("search", False)])
def test_streamed_analyze_writes_the_same_plan(preset, offload, calib_dirs, sharded_llama, tmp_path):
    """Bit-identical scores, NLLs, A8 set, manifest and plan.md. Each streamed run (the base, all A6, one per
    linear from its own decoder layer, the plan) does the in-memory analysis's float ops in the same order, one
    sample at a time, so no tolerance is needed. flexq: smoothing and the output clip search (its
    calibration activations carried beside the runs)."""
    from flexq_cli.analyze import AnalyzeConfig, analyze
    from flexq_cli.config import load_preset

    if preset == "search":
        preset = str(tmp_path / "search.yaml")
        Path(preset).write_text(SEARCH)
    cfg, base = AnalyzeConfig(a8_count=5, samples=2, seqlen=32, method="exact"), load_preset(preset)
    acts = tmp_path / "acts"
    acts.mkdir()
    analyze(str(sharded_llama), calib_dirs / "full", cfg, base, tmp_path / "full")
    r = analyze(str(sharded_llama), calib_dirs / "full", cfg, base, tmp_path / "stream", stream=True,
                offload_dir=acts if offload else None)
    (ma, ta, md_a), (mb, tb, md_b) = _plan(tmp_path / "full"), _plan(tmp_path / "stream")
    assert torch.equal(ta["kl"], tb["kl"]) and torch.equal(ta["dnll"], tb["dnll"])
    assert (ta["kl"] > 0).all() and len(r["chosen"]) == 5
    assert ma.extra == mb.extra and ma.config == mb.config and md_a == md_b
    assert not list(acts.iterdir())


def test_streamed_analyze_cli_with_offload_and_scores_from(calib_dirs, sharded_llama, tmp_path):
    """Through the CLI: --stream --offload-dir, then --stream --scores-from (one pass for the three NLLs)."""
    (tmp_path / "acts").mkdir()
    common = ("analyze", sharded_llama, "--calib", calib_dirs / "full", "--samples", 2, "--seqlen", 32,
              "--a8-count", 4, "--device", "cpu", "--method", "exact")
    code, _, err = run_cli(*common, "--out", tmp_path / "full")
    assert code == 0, err
    code, out, err = run_cli(*common, "--out", tmp_path / "stream", "--stream", "--offload-dir", tmp_path / "acts")
    assert code == 0, err
    code, _, err = run_cli(*common, "--out", tmp_path / "again", "--stream", "--a8-count", 6,
                           "--scores-from", tmp_path / "stream")
    assert code == 0, err
    (ma, ta, md_a), (mb, tb, md_b) = _plan(tmp_path / "full"), _plan(tmp_path / "stream")
    assert torch.equal(ta["kl"], tb["kl"]) and ma.extra == mb.extra and md_a == md_b
    mc, tc, _ = _plan(tmp_path / "again")
    assert torch.equal(tc["kl"], tb["kl"]) and len(mc.extra["act_bits"]) == 6
    nll_a, nll_c = ma.extra["summary"]["calibration_nll"], mc.extra["summary"]["calibration_nll"]
    assert nll_c["fp_w6a8"] == nll_a["fp_w6a8"] and nll_c["fp_w6a6"] == nll_a["fp_w6a6"]
    assert not list((tmp_path / "acts").iterdir())


def _analyze_both(model: Path, text_file: Path, tmp_path: Path, samples: int, seqlen: int):
    """Calibrate ``model``, then analyze it in memory and streamed; returns both plans."""
    from flexq_cli.analyze import AnalyzeConfig, analyze
    from flexq_cli.config import load_preset

    code, _, err = run_cli("calibrate", model, "--data", text_file, "--samples", samples, "--seqlen", seqlen,
                           "--device", "cpu", "--out", tmp_path / "calib")
    assert code == 0, err
    cfg = AnalyzeConfig(a8_budget=0.25, samples=samples, seqlen=seqlen, method="exact")
    for name, stream in (("full", False), ("stream", True)):
        analyze(str(model), tmp_path / "calib", cfg, load_preset("w6a8"), tmp_path / name, stream=stream)
    return _plan(tmp_path / "full"), _plan(tmp_path / "stream")


def test_streamed_analyze_of_a_tied_model(tokenizer, text_file, tmp_path):
    """A tied lm_head (SmolLM2's) has no tensor of its own in the checkpoint: the head reads the embedding."""
    from conftest import make_tiny

    model = make_tiny(tmp_path / "tied", tokenizer, tie_word_embeddings=True, num_hidden_layers=3)
    (ma, ta, md_a), (mb, tb, md_b) = _analyze_both(model, text_file, tmp_path, 2, 24)
    assert torch.equal(ta["kl"], tb["kl"]) and torch.equal(ta["dnll"], tb["dnll"])
    assert ma.extra == mb.extra and md_a == md_b


def test_streamed_analyze_of_a_bfloat16_checkpoint(tiny_llama, text_file, tmp_path):
    """Without smoothing or Hessians the streamed analysis keeps each layer in its stored 16 bits (the codes come
    from each linear upcast alone, every linear runs as a float32 SimQuantLinear, the norms' bfloat16 weights
    promote exactly): one 70B layer then costs 1x its size, not 2x. The plan must still be bit-identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(src)
    (ma, ta, md_a), (mb, tb, md_b) = _analyze_both(src, text_file, tmp_path, 2, 24)
    assert torch.equal(ta["kl"], tb["kl"]) and torch.equal(ta["dnll"], tb["dnll"]) and (ta["kl"] > 0).all()
    assert ma.extra == mb.extra and md_a == md_b


@pytest.mark.slow  # ~85 s on 2 CPU cores: 210 linears, 3,255 layer forwards each way (1 x 32 tokens)
def test_streamed_analyze_on_smollm2_writes_the_same_plan(smollm2_dir, text_file, tmp_path):
    (ma, ta, md_a), (mb, tb, md_b) = _analyze_both(smollm2_dir, text_file, tmp_path, 1, 32)
    assert torch.equal(ta["kl"], tb["kl"]) and torch.equal(ta["dnll"], tb["dnll"])
    assert ma.extra == mb.extra and md_a == md_b


def test_shard_writer_output_reads_back_with_safetensors(tmp_path):
    """Headers written last, padded with spaces: safetensors readers accept them, and the digest checks."""
    from flexq_cli.artifacts import Manifest, load_tensors, read_manifest

    tensors = {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.randn(5).half(),
               "c": torch.randn(3, 2).bfloat16(), "e": torch.empty(0, dtype=torch.float16)}
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    writer = streaming.ShardWriter(tmp_path, [("model-00001-of-00002.safetensors", {"a": meta["a"], "c": meta["c"]}),
                                              ("model-00002-of-00002.safetensors", {"b": meta["b"], "e": meta["e"]})])
    for k in ("e", "c", "b", "a"):
        writer.write(k, tensors[k])
    writer.finish(Manifest(stage="quantized", source={}))
    got = {}
    for f in sorted(tmp_path.glob("model-*.safetensors")):
        got.update(load_tensors(f, read_manifest(f)))
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["b"] == "model-00002-of-00002.safetensors"


def test_bfloat16_checkpoint_quantizes_identically_from_its_stored_dtype(tiny_llama, tmp_path):
    """Round to nearest reads 16-bit weights as stored (no float32 copy of the layer): same codes and tensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flexq_cli.quantize import quantize

    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(src)
    quantize(str(src), tmp_path / "full", preset="w6a6")
    quantize(str(src), tmp_path / "stream", preset="w6a6", stream=True)
    assert_same_artifact(tmp_path / "full", tmp_path / "stream")


@pytest.mark.slow  # ~100 s on 2 CPU cores: two whole quantizations of SmolLM2-135M
def test_streamed_quantize_on_smollm2_is_bit_identical(smollm2_dir, tmp_path):
    from flexq_cli.quantize import quantize

    quantize(str(smollm2_dir), tmp_path / "full", preset="w6a6")
    quantize(str(smollm2_dir), tmp_path / "stream", preset="w6a6", stream=True)
    assert_same_artifact(tmp_path / "full", tmp_path / "stream")
