"""Every kind of bad input: one line naming the problem, a non-zero exit, and no output left behind."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny, run_cli


def assert_clean_failure(tmp_path, code, err, *fragments, out_name="out"):
    last = err.strip().splitlines()[-1]
    assert code != 0
    assert last.startswith("flexq: error:"), err
    for fragment in fragments:
        assert fragment in last, last
    assert "Traceback" not in err
    assert not (tmp_path / out_name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out_name}.")]  # no temp dirs either


def test_missing_model(tmp_path):
    code, _, err = run_cli("quantize", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "not found")


def test_unknown_alias_and_unreachable_hub(tmp_path):
    code, _, err = run_cli("quantize", "llama-9b", "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "'llama-9b' not found", "aliases:")
    code, _, err = run_cli("quantize", "no-such-org/no-such-model", "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "could not be fetched from the hub")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("eval", tmp_path / "empty", "--device", "cpu")
    assert code == 1 and "without config.json" in err


def test_unsupported_architecture(tmp_path, tokenizer):
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    model.save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli("quantize", tmp_path / "gpt2", "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "GPT2LMHeadModel is not supported", "LlamaForCausalLM")


def test_calibration_from_another_model(tmp_path, tokenizer, calib):
    other = make_tiny(tmp_path / "other", tokenizer, seed=1)
    code, _, err = run_cli("analyze", other, "--calib", calib, "--out", tmp_path / "out", "--samples", 1,
                           "--seqlen", 16, "--device", "cpu")
    assert_clean_failure(tmp_path, code, err, "was made from model", "not this one")


def test_wrong_stage(tmp_path, tiny_llama, calib):
    code, _, err = run_cli("quantize", tiny_llama, "--plan", calib, "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "'calibration' artifact, but a 'plan' artifact is needed")


def test_truncated_and_corrupted_artifacts(tmp_path, tiny_llama, calib):
    import shutil

    bad = tmp_path / "calib"
    shutil.copytree(calib, bad)
    f = bad / "calibration.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("analyze", tiny_llama, "--calib", bad, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(tmp_path, code, err, "truncated or corrupted")
    flipped = bytearray(data)
    flipped[-3] ^= 0x55
    f.write_bytes(bytes(flipped))
    code, _, err = run_cli("analyze", tiny_llama, "--calib", bad, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(tmp_path, code, err, "corrupted")


def test_truncated_quantized_model(tmp_path, tiny_llama):
    code, _, err = run_cli("quantize", tiny_llama, "--preset", "w6a6", "--out", tmp_path / "q")
    assert code == 0, err
    f = tmp_path / "q" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    code, _, err = run_cli("eval", tmp_path / "q", "--device", "cpu")
    assert code == 1 and "truncated or corrupted" in err.strip().splitlines()[-1]


def test_existing_out_is_refused_unless_forced(tmp_path, tiny_llama):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("precious")
    code, _, err = run_cli("quantize", tiny_llama, "--preset", "w6a8", "--out", tmp_path / "out")
    assert code == 1 and "already exists" in err and "--force" in err
    assert (tmp_path / "out" / "mine.txt").read_text() == "precious"
    code, _, err = run_cli("quantize", tiny_llama, "--preset", "w6a8", "--out", tmp_path / "out", "--force")
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "mine.txt").exists()


def _tiny_with(tmp_path, tokenizer, edit):
    from transformers import AutoModelForCausalLM

    path = make_tiny(tmp_path / "src", tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(path)
    return path


def test_nonfinite_weights(tmp_path, tokenizer):
    src = _tiny_with(tmp_path, tokenizer, lambda m: m.model.layers[1].mlp.up_proj.weight.__setitem__((3, 5), float("nan")))
    code, _, err = run_cli("quantize", src, "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "model.layers.1.mlp.up_proj", "NaN/Inf")


def test_nonfinite_activations(tmp_path, tokenizer, text_file):
    src = _tiny_with(tmp_path, tokenizer, lambda m: m.model.layers[0].post_attention_layernorm.weight.fill_(float("inf")))
    code, _, err = run_cli("calibrate", src, "--data", text_file, "--samples", 1, "--seqlen", 16, "--out",
                           tmp_path / "out", "--device", "cpu")
    assert_clean_failure(tmp_path, code, err, "NaN/Inf activations reach model.layers.0.mlp")


def test_all_zero_weight_groups_quantize_exactly(tmp_path, tokenizer):
    from flexq_cli.quantize import load_quantized

    src = _tiny_with(tmp_path, tokenizer, lambda m: m.model.layers[0].mlp.down_proj.weight[:, :128].zero_())
    code, out, err = run_cli("quantize", src, "--preset", "w6a8", "--out", tmp_path / "q")
    assert code == 0, err
    assert "96 weight groups were all zero" in err
    model, _, _ = load_quantized(tmp_path / "q")
    layer = model.model.layers[0].mlp.down_proj
    assert torch.equal(layer.dequantized_weight()[:, :128], torch.zeros(96, 128))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 1000, (1, 12))).logits).all()


def test_seqlen_longer_than_the_model_allows(tmp_path, tiny_llama, text_file):
    code, _, err = run_cli("calibrate", tiny_llama, "--data", text_file, "--seqlen", 1024, "--out",
                           tmp_path / "out", "--device", "cpu")
    assert_clean_failure(tmp_path, code, err, "--seqlen 1024 is longer than this model allows (512")
    code, _, err = run_cli("eval", tiny_llama, "--ppl", text_file, "--seqlen", 4096, "--device", "cpu")
    assert code == 1 and "longer than this model allows" in err


def test_bad_options(tmp_path, tiny_llama, calib):
    code, _, err = run_cli("quantize", tiny_llama, "--preset", "w5a5", "--out", tmp_path / "out")
    assert_clean_failure(tmp_path, code, err, "unknown preset 'w5a5'")
    code, _, err = run_cli("analyze", tiny_llama, "--calib", calib, "--a8-budget", 1.5, "--out", tmp_path / "out")
    assert code == 2 and "a8_budget" in err and not (tmp_path / "out").exists()
    code, _, err = run_cli("eval", tiny_llama, "--ppl", tmp_path / "missing.txt", "--seqlen", 64, "--device", "cpu")
    assert code == 1 and "neither wikitext2 nor c4 nor a readable file" in err
    code, _, err = run_cli("eval", tiny_llama, "--backend", "magic", "--device", "cpu")
    assert code == 1 and "unknown --backend" in err
    code, _, err = run_cli("quantize", tiny_llama)
    assert code == 2 and "--out" in err


def test_ctrl_c_during_quantize_leaves_nothing(tmp_path, tiny_llama, monkeypatch):
    from flexq_cli import modules

    calls = []
    original = modules.QuantLinear.from_linear.__func__

    def interrupt_on_third(cls, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(modules.QuantLinear, "from_linear", classmethod(interrupt_on_third))
    code, _, err = run_cli("quantize", tiny_llama, "--out", tmp_path / "out")
    assert code == 130 and "interrupted" in err and len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_quantize_leaves_nothing(tmp_path, tiny_llama, monkeypatch):
    """A CI timeout sends SIGTERM: the handler `flexq` installs turns it into the same unwinding as Ctrl-C."""
    import signal

    from flexq_cli import modules
    from flexq_cli.cli import main as cli_main

    monkeypatch.setattr(cli_main, "_terminated", [])  # the handler's record, restored after the test
    with pytest.raises(cli_main.Terminated):
        cli_main._on_sigterm(signal.SIGTERM, None)
    monkeypatch.setattr(cli_main, "_terminated", [])
    original = modules.QuantLinear.from_linear.__func__

    def terminate_on_second(cls, *args, **kwargs):
        terminate_on_second.calls += 1
        if terminate_on_second.calls == 2:
            cli_main._on_sigterm(signal.SIGTERM, None)
        return original(cls, *args, **kwargs)

    terminate_on_second.calls = 0
    monkeypatch.setattr(modules.QuantLinear, "from_linear", classmethod(terminate_on_second))
    code, _, err = run_cli("quantize", tiny_llama, "--out", tmp_path / "out")
    assert code == 143 and "terminated" in err
    assert list(tmp_path.iterdir()) == []
