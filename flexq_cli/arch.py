"""Architecture as data: which decoder linears exist, which share an input, and which norm or linear feeds them.

LLaMA, Mistral and Qwen2 share one decoder block (Qwen2 adds q/k/v biases, which the quantized linear keeps),
so one table entry serves all three. A new family with the same block is one line in ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedModel


@dataclass(frozen=True)
class LinearGroup:
    linears: tuple[str, ...]  # names relative to the decoder layer; they read the same input
    norm: str | None  # RMSNorm whose output is that input (a scale can fold into its weight)
    prev: str | None  # linear whose output (through attention or the gated activation) is that input


@dataclass(frozen=True)
class DecoderSpec:
    layers: str  # path of the decoder layer list from the model root
    final_norm: str
    lm_head: str
    groups: tuple[LinearGroup, ...]

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.groups for name in group.linears)


LLAMA_BLOCK = DecoderSpec(
    layers="model.layers",
    final_norm="model.norm",
    lm_head="lm_head",
    groups=(
        LinearGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", None),
        LinearGroup(("self_attn.o_proj",), None, "self_attn.v_proj"),
        LinearGroup(("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", None),
        LinearGroup(("mlp.down_proj",), None, "mlp.up_proj"),
    ),
)

ARCHITECTURES: dict[str, DecoderSpec] = {
    "LlamaForCausalLM": LLAMA_BLOCK,
    "MistralForCausalLM": LLAMA_BLOCK,
    "Qwen2ForCausalLM": LLAMA_BLOCK,
}


# GGUF-derived configs carry no ``architectures``; their model_type names the causal-LM class.
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def spec_for_config(config) -> DecoderSpec:
    """The decoder spec of a transformers config, or UnsupportedModel naming the architecture."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs and getattr(config, "model_type", None) in MODEL_TYPES:
        archs = [MODEL_TYPES[config.model_type]]
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    name = archs[0] if archs else getattr(config, "model_type", "unknown")
    raise UnsupportedModel(f"architecture {name} is not supported",
                           f"supported: {', '.join(ARCHITECTURES)}")


def decoder_layers(model: torch.nn.Module, spec: DecoderSpec) -> torch.nn.ModuleList:
    return model.get_submodule(spec.layers)


def linear_names(model: torch.nn.Module, spec: DecoderSpec) -> list[str]:
    """Full module names of every quantizable decoder linear, in execution order."""
    n = len(decoder_layers(model, spec))
    return [f"{spec.layers}.{i}.{rel}" for i in range(n) for rel in spec.linears]


def layer_index(name: str, spec: DecoderSpec) -> int:
    """Decoder layer index of a full linear name (``model.layers.7.mlp.up_proj`` -> 7)."""
    return int(name[len(spec.layers) + 1:].split(".", 1)[0])
