"""The Fisher sensitivity estimate (fisher.py) against the exact per-linear runs, on tiny random-init LLaMAs.

Thresholds measured first (seeds 0-3, 2 samples x 64 tokens, 4 draws): with every other linear at A8, Spearman
0.895-0.960 between the two KL rankings (exact adds a floor from downstream A8 rounding flips that the
second-order estimate leaves out); with every other linear's activations in float (no such floor) 0.947-0.991
for the KL and 0.991-1.000 for the dNLL, and the Fisher KL of the linears above a tenth of the top exact score
within 15-29% of the exact value; a damaged linear came first in both methods, 2.4-3.7x (exact) and 3.8-6.6x
(Fisher) above the second.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from flexq_cli.analyze import measure_sensitivity, simulated_model
from flexq_cli.config import QuantConfig
from flexq_cli.fisher import fisher_sensitivity

DAMAGED = "model.layers.0.mlp.down_proj"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (no ties expected in float scores)."""
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _tiny(seed: int = 0, damage: float | None = None):
    """(model, spec, sims at A8, (2, 64) ids). ``damage``: channel 7 of DAMAGED's input scaled up by that factor
    (up_proj's row up, down_proj's column down: the float function is unchanged), an outlier that coarsens its
    128-group's activation step, so A6 hurts that linear alone much more than A8."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flexq_cli.arch import spec_for_config

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    if damage:
        mlp = model.model.layers[0].mlp
        with torch.no_grad():
            mlp.up_proj.weight[7] *= damage
            mlp.down_proj.weight[:, 7] /= damage
    spec = spec_for_config(cfg)
    sims = simulated_model(model, spec, QuantConfig(act_bits=8), None, None)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(seed))
    return model, spec, sims, ids


@pytest.fixture(scope="module")
def damaged():
    model, spec, sims, ids = _tiny(damage=30.0)
    return list(sims), measure_sensitivity(model, spec, sims, ids), fisher_sensitivity(model, sims, ids, 4)


def test_fisher_scores_are_finite_and_non_negative(damaged):
    names, _, (kl, dnll) = damaged
    assert kl.shape == dnll.shape == (len(names),) and kl.dtype == torch.float32
    assert torch.isfinite(kl).all() and torch.isfinite(dnll).all() and (kl >= 0).all() and (kl > 0).any()


def test_a_damaged_linear_ranks_first_in_both_methods(damaged):
    names, (exact, _), (fisher, _) = damaged
    for scores in (exact, fisher):
        top, second = scores.sort(descending=True).values[:2]
        assert names[int(scores.argmax())] == DAMAGED and top > 2 * second


def test_fisher_ranks_like_exact_with_a8_everywhere(damaged):
    names, (exact, _), (fisher, _) = damaged
    assert spearman(exact, fisher) > 0.8


def test_fisher_matches_exact_when_nothing_downstream_rounds():
    """Other linears' activations in float: exact KL is then the smooth function the second-order estimate
    approximates; rankings agree closely, and the top linears' values agree within 35%."""
    model, spec, sims, ids = _tiny(seed=1)
    for sim in sims.values():
        sim.act_bits = None
    kl, dnll = measure_sensitivity(model, spec, sims, ids)
    fk, fd = fisher_sensitivity(model, sims, ids, 4)
    assert all(sim.act_bits is None for sim in sims.values())  # both restore the bits they found
    assert spearman(kl, fk) > 0.9 and spearman(dnll, fd) > 0.95
    big = kl > 0.1 * kl.max()
    assert big.sum() >= 3 and ((fk[big] / kl[big]) - 1).abs().max() < 0.35


def test_more_draws_change_little_and_a_seed_is_reproducible():
    model, spec, sims, ids = _tiny(seed=2)
    a, _ = fisher_sensitivity(model, sims, ids, 2, seed=5)
    b, _ = fisher_sensitivity(model, sims, ids, 2, seed=5)
    c, _ = fisher_sensitivity(model, sims, ids, 8, seed=6)
    assert torch.equal(a, b) and spearman(a, c) > 0.9


def test_cli_method_fisher_writes_a_plan_that_records_it(tmp_path, tiny_llama, calib):
    from flexq_cli.analyze import load_plan

    code, out, err = run_cli("analyze", tiny_llama, "--calib", calib, "--method", "fisher", "--fisher-draws", 2,
                             "--a8-count", 3, "--samples", 2, "--seqlen", 48, "--out", tmp_path / "plan",
                             "--device", "cpu")
    assert code == 0, err
    manifest, tensors = load_plan(tmp_path / "plan")
    assert manifest.config["analyze"]["method"] == "fisher" and manifest.config["analyze"]["fisher_draws"] == 2
    assert len(manifest.extra["act_bits"]) == 3 and (tensors["kl"] >= 0).all() and "plan" in out


@pytest.mark.parametrize("args, code, words", [
    (("--method", "hessian"), 2, "method must be one of auto, exact, fisher"),
    (("--method", "fisher", "--fisher-draws", 0), 2, "fisher_draws must be >= 1"),
    (("--method", "fisher", "--stream"), 1, "--method exact with --stream"),
])
def test_cli_bad_method_options_are_one_line_errors(tmp_path, tiny_llama, calib, args, code, words):
    got, _, err = run_cli("analyze", tiny_llama, "--calib", calib, "--samples", 1, "--seqlen", 16,
                          "--out", tmp_path / "plan", "--device", "cpu", *args)
    assert got == code and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "plan").exists()


def test_the_default_method_is_fisher_in_memory_and_exact_streamed():
    from flexq_cli.analyze import AnalyzeConfig, resolve_method

    cfg = AnalyzeConfig()
    assert cfg.method == "auto"
    assert resolve_method(cfg, stream=False).method == "fisher"
    assert resolve_method(cfg, stream=True).method == "exact"
    assert resolve_method(AnalyzeConfig(method="exact"), stream=False).method == "exact"


def test_scores_from_records_the_method_that_measured_them(tmp_path, tiny_llama, calib):
    from flexq_cli.analyze import load_plan

    common = ("analyze", tiny_llama, "--calib", calib, "--samples", 2, "--seqlen", 32, "--device", "cpu")
    code, _, err = run_cli(*common, "--method", "fisher", "--fisher-draws", 3, "--a8-count", 2, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_cli(*common, "--method", "exact", "--a8-count", 4, "--scores-from", tmp_path / "a",
                           "--out", tmp_path / "b")
    assert code == 0, err
    measured = load_plan(tmp_path / "b")[0].config["analyze"]
    assert measured["method"] == "fisher" and measured["fisher_draws"] == 3 and measured["a8_count"] == 4
