"""The whole CLI chain on the offline SmolLM2-135M (K = 576: not a multiple of the 128 group), kept short."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def chain(tmp_path_factory, smollm2_dir, wikitext_test):
    root = tmp_path_factory.mktemp("smol")
    steps = [
        ("calibrate", "smollm2-135m", "--data", wikitext_test, "--offset-tokens", 81920, "--samples", 2,
         "--seqlen", 128, "--device", "cpu", "--out", root / "calib"),
        ("analyze", "smollm2-135m", "--calib", root / "calib", "--a8-count", 30, "--samples", 1, "--seqlen", 48,
         "--device", "cpu", "--out", root / "plan"),
        ("quantize", "smollm2-135m", "--plan", root / "plan", "--out", root / "q"),
    ]
    for step in steps:
        code, out, err = run_cli(*step)
        assert code == 0, f"{step[0]}: {err}"
    return root


def test_plan_has_thirty_a8_linears_chosen_by_score(chain):
    from flexq_cli.analyze import load_plan

    manifest, tensors = load_plan(chain / "plan")
    assert len(manifest.extra["layers"]) == 210 and len(manifest.extra["act_bits"]) == 30
    kl = tensors["kl"]
    assert torch.all(kl >= 0) and kl.max() > 2 * kl.median()  # a spread between layers, not one value
    a8 = [manifest.extra["layers"].index(n) for n in manifest.extra["act_bits"]]
    assert kl[a8].min() >= kl.sort(descending=True).values[29]  # the top 30 by score
    nll = manifest.extra["summary"]["calibration_nll"]
    assert nll["fp_w6a8"] < nll["fp_w6a6"]


def test_packed_linears_take_six_bits_per_padded_weight(chain):
    from safetensors import safe_open

    with safe_open(str(chain / "q" / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        qw = [fh.get_tensor(k) for k in keys if k.endswith(".qweight")]
        sc = [fh.get_tensor(k) for k in keys if k.endswith(".scales")]
    assert len(qw) == 210
    packed = sum(t.numel() * 4 for t in qw)
    padded = sum(t.shape[0] * t.shape[1] // 24 * 128 for t in qw)
    assert packed == padded * 6 // 8  # 0.75 B per (padded) weight, exactly
    assert sum(t.numel() * 2 for t in sc) == padded // 128 * 2  # one float16 scale per 128 weights


def test_eval_fp_and_quantized_on_the_same_windows(chain, tmp_path):
    results = {}
    for name, model in (("fp", "smollm2-135m"), ("q", chain / "q")):
        code, out, err = run_cli("eval", model, "--ppl", "wikitext2", "--seqlen", 256, "--max-windows", 2,
                                 "--device", "cpu", "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    fp, q = results["fp"]["ppl"], results["q"]["ppl"]
    assert 5 < fp < 100 and results["q"]["windows"] == 2
    assert fp < q < fp * 1.25  # W6 with a planned A6/A8 mix costs a little, not a lot


def test_reload_is_bit_identical(chain):
    from flexq_cli.quantize import load_quantized

    ids = torch.randint(0, 49152, (1, 64))
    logits = []
    for _ in range(2):
        model, _, _ = load_quantized(chain / "q")
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.equal(*logits)
