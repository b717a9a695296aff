"""The quantization config, presets and per-layer activation bits."""

from __future__ import annotations

import pytest

from flexq_cli.config import QuantConfig, load_preset, preset_names
from flexq_cli.errors import FlexQError


def test_presets_exist_and_load():
    assert {"w6a6", "w6a8", "flexq", "flexq-rtn", "w6a8-best"} <= set(preset_names())
    assert load_preset("w6a8").act_bits_for("model.layers.0.self_attn.q_proj") == 8
    assert load_preset("w6a6").act_bits_for("model.layers.0.mlp.down_proj") == 6
    for name in ("flexq", "flexq-rtn"):  # FlexQ's mix, with and without the accuracy algorithms
        flexq = load_preset(name)
        assert flexq.act_bits_for("model.layers.3.mlp.down_proj") == 8
        assert flexq.act_bits_for("model.layers.3.mlp.up_proj") == 6
    assert load_preset("flexq").needs_calibration and not load_preset("flexq-rtn").needs_calibration


def test_overrides_are_ordered_and_exact_names_win_where_listed_first():
    cfg = QuantConfig(act_bits=6, act_bits_overrides=(("model.layers.1.mlp.down_proj", 6), ("re:.*down_proj", 8)))
    assert cfg.act_bits_for("model.layers.1.mlp.down_proj") == 6
    assert cfg.act_bits_for("model.layers.2.mlp.down_proj") == 8
    assert cfg.with_plan({"a.b": 8}, 6).act_bits_for("a.b") == 8


def test_dict_round_trip():
    cfg = load_preset("flexq")
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("raw,match", [({"act_bits": 7}, "activation bits"), ({"weight_bits": 4}, "weight_bits"),
                                       ({"weight_group_size": 64}, "group_size"), ({"colour": 1}, "unknown key"),
                                       ({"act_bits_overrides": {"re:(": 8}}, "unterminated|missing")])
def test_bad_configs_are_rejected(raw, match):
    with pytest.raises(FlexQError, match=match):
        QuantConfig.from_dict(raw)


def test_unknown_preset(tmp_path):
    with pytest.raises(FlexQError, match="unknown preset"):
        load_preset("w5a5")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("act_bits: 8\nweight_group_size: -1\n")
    assert load_preset(str(yaml_file)).weight_group_size == -1
