"""The CLI chain on tiny random-init LLaMA-family models: calibrate -> analyze -> quantize -> eval, reloads."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny, run_cli
from flexq_cli.quantize import load_quantized


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_llama, text_file):
    """calib/, plan/ and a planned quantized directory for the tiny LLaMA."""
    root = tmp_path_factory.mktemp("chain")
    code, _, err = run_cli("calibrate", tiny_llama, "--data", text_file, "--samples", 3, "--seqlen", 64,
                           "--out", root / "calib", "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("analyze", tiny_llama, "--calib", root / "calib", "--a8-budget", 0.25,
                             "--samples", 2, "--seqlen", 32, "--out", root / "plan", "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("quantize", tiny_llama, "--plan", root / "plan", "--out", root / "q")
    assert code == 0, err
    return root


def test_calibration_artifact(chain):
    from flexq_cli.calibrate import load_calibration

    manifest, tensors = load_calibration(chain / "calib")
    assert tensors["input_ids"].shape == (3, 64)
    assert len(manifest.extra["layers"]) == 14
    absmax = tensors["model.layers.1.mlp.down_proj.absmax"]
    assert absmax.shape == (200,) and (absmax > 0).all()
    q = tensors["model.layers.0.self_attn.q_proj.token_absmax"]
    assert q.shape == (5,) and torch.all(q[1:] >= q[:-1])


def test_plan_picks_the_budget_and_ranks_by_measured_score(chain):
    from flexq_cli.analyze import load_plan

    manifest, tensors = load_plan(chain / "plan")
    kl = tensors["kl"]
    assert kl.shape == (14,) and torch.all(kl >= 0) and kl.max() > 0
    a8 = manifest.extra["act_bits"]
    assert len(a8) == round(0.25 * 14) and set(a8.values()) == {8}
    names = manifest.extra["layers"]
    chosen = [names.index(n) for n in a8]
    assert min(kl[chosen]) >= max(kl[[i for i in range(14) if i not in chosen]])
    rows = (chain / "plan" / "plan.md").read_text().splitlines()
    assert sum(r.endswith("| 8 |") for r in rows) == len(a8)


def test_quantized_directory_holds_packed_weights_and_a_manifest(chain):
    from safetensors import safe_open

    q = chain / "q"
    config = json.loads((q / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "flexq"
    with safe_open(str(q / "model.safetensors"), "pt") as fh:
        manifest = json.loads(fh.metadata()["flexq"])
        qweight = fh.get_tensor("model.layers.0.mlp.down_proj.qweight")
        scales = fh.get_tensor("model.layers.0.mlp.down_proj.scales")
        embed = fh.get_tensor("model.embed_tokens.weight")
    assert manifest["stage"] == "quantized" and manifest["source"]["fingerprint"]
    assert qweight.dtype == torch.int32 and qweight.shape == (96, 256 // 128 * 24)  # K=200 padded to 256
    assert scales.dtype == torch.float16 and scales.shape == (96, 2)
    assert embed.dtype == torch.float16


def test_reload_gives_bit_identical_logits(chain):
    ids = torch.randint(0, 1000, (2, 40))
    a, _, _ = load_quantized(chain / "q")
    b, _, _ = load_quantized(chain / "q")
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert torch.equal(la, lb) and torch.isfinite(la).all()


def test_row_major_records_of_an_older_directory_are_regrouped_on_load(chain, tmp_path):
    """Directories written before the 16-row groups (no extra.qweight_layout) load as the same weights."""
    import dataclasses
    import shutil

    from flexq_cli.artifacts import load_tensors, read_manifest, save_artifact
    from flexq_cli.errors import ArtifactError
    from flexq_cli.packing import ungroup_rows

    old = tmp_path / "old"
    shutil.copytree(chain / "q", old)
    manifest = read_manifest(old / "model.safetensors")
    tensors = load_tensors(old / "model.safetensors", manifest)
    rows = {k: ungroup_rows(v) if k.endswith(".qweight") else v for k, v in tensors.items()}
    assert any(not torch.equal(rows[k], tensors[k]) for k in tensors if k.endswith(".qweight"))
    extra = {k: v for k, v in manifest.extra.items() if k != "qweight_layout"}
    save_artifact(old / "model.safetensors", rows, dataclasses.replace(manifest, extra=extra))
    a, _, _ = load_quantized(chain / "q")
    b, _, _ = load_quantized(old)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    unknown = dataclasses.replace(manifest, extra={**extra, "qweight_layout": "x"})
    save_artifact(old / "model.safetensors", rows, unknown)
    with pytest.raises(ArtifactError, match="qweight layout 'x' is unknown"):
        load_quantized(old)


def test_quantized_model_tracks_the_float_model(chain, tiny_llama):
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    q, _, _ = load_quantized(chain / "q")
    ids = torch.randint(0, 1000, (1, 48))
    with torch.no_grad():
        lf, lq = fp(ids).logits, q(ids).logits
    assert (lq - lf).norm() / lf.norm() < 0.2  # random-init weights: 6-bit error is a few percent per layer


def test_eval_runs_on_both_and_writes_json(chain, tiny_llama, text_file, tmp_path):
    for model in (tiny_llama, chain / "q"):
        code, out, err = run_cli("eval", model, "--ppl", text_file, "--seqlen", 64, "--max-windows", 3,
                                 "--device", "cpu", "--json", tmp_path / "r.json")
        assert code == 0, err
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["windows"] == 3 and result["ppl"] > 1 and "PPL" in out


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_same_block_families_quantize_through_the_same_table(arch, tmp_path, tokenizer, text_file):
    src = make_tiny(tmp_path / arch, tokenizer, arch=arch)
    code, _, err = run_cli("quantize", src, "--preset", "w6a8", "--out", tmp_path / "q")
    assert code == 0, err
    model, _, _ = load_quantized(tmp_path / "q")
    if arch == "qwen2":  # q/k/v carry biases, kept beside the packed weights
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 1000, (1, 16))).logits).all()


def test_sharded_output_loads_identically(tmp_path, tiny_llama):
    from flexq_cli.quantize import quantize

    quantize(str(tiny_llama), tmp_path / "one", preset="w6a6")
    quantize(str(tiny_llama), tmp_path / "many", preset="w6a6", max_shard_bytes=2_000_000)
    assert (tmp_path / "many" / "model.safetensors.index.json").is_file()
    a, _, _ = load_quantized(tmp_path / "one")
    b, _, _ = load_quantized(tmp_path / "many")
    ids = torch.randint(0, 1000, (1, 20))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
