"""Text generation over a static KV cache, with the decode step captured in a CUDA graph on GPUs.

Decoding one token is hundreds of small kernel launches; eager PyTorch is launch-bound there (an FP16
LLaMA-2-7B decodes at ~33 tok/s eagerly against a ~215 tok/s bandwidth roofline on the H100). So:

* ``StaticKV`` preallocates every layer's keys and values at ``max_len`` and writes new entries in place at
  ``positions`` (a device tensor), so one decode step always touches the same addresses;
* the attention mask is passed ready as a 4D additive tensor (batch, 1, query, max_len) of the compute dtype, 0
  where a key may be seen and -inf where not, which transformers uses as-is: no mask is built (and no host sync
  happens) inside the step, and SDPA gets the float mask it would otherwise make from a boolean one in every layer
  (three small kernels per layer on CUDA);
* ``Decoder.step`` copies the new token ids and positions into static buffers, opens the new key in the mask
  (one fill; prefill wrote the rest) and replays a CUDA graph of the whole forward pass (quantized linears
  included: the BTC kernel launches on the capturing stream);
* attention reads a prefix of the cache, not all ``max_len`` keys: the keys up to the step's position rounded up
  to a bucket (``view_bucket``), one graph per bucket, all captured at the first step (keys past the position
  are masked out anyway; at batch 16 and 384 positions the full cache is two thirds the size of a 7B W6A8 model's
  packed weights). How many buckets weighs each capture's host time against the keys it saves (``graph_count``).

Prompts of different lengths are left-padded; padded keys are masked out and position ids count real tokens.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch

from .errors import FlexQError


class StaticKV:
    """Duck-typed transformers cache: the attention layers call ``update(k, v, layer_idx)``.

    ``device``: one device, or a list with each decoder layer's (a model spread over several devices keeps each
    layer's keys and values where that layer computes)."""

    def __init__(self, config, batch: int, max_len: int, dtype: torch.dtype, device):
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (batch, heads, max_len, head_dim)
        devices = device if isinstance(device, (list, tuple)) else [device] * config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.values = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.positions = torch.zeros(1, dtype=torch.long, device=devices[0])  # cache slots this forward writes
        self.max_len = max_len
        self.view_len = max_len  # the keys attention reads: the first view_len of every layer's cache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values, slots = self.layer_buffers(layer_idx)
        keys.index_copy_(2, slots, key_states.to(keys.dtype))
        values.index_copy_(2, slots, value_states.to(values.dtype))
        return self.visible(keys, values)

    def visible(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``view_len`` keys and values of one layer's buffers (views)."""
        n = self.view_len
        return (keys, values) if n == self.max_len else (keys[:, :, :n], values[:, :, :n])

    def layer_buffers(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, slots) of one layer, for an attention that writes the cache itself in one kernel with its
        rotary embedding (modules.KernelAttention) instead of calling ``update``."""
        keys = self.keys[layer_idx]
        slots = self.positions if self.positions.device == keys.device else self.positions.to(keys.device)
        return keys, self.values[layer_idx], slots

    def get_seq_length(self, layer_idx: int = 0) -> int:  # unused: position ids are always passed
        return 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class Decoder:
    """Prefill eagerly, then decode one token per step (graph-replayed on CUDA when ``use_graph``)."""

    def __init__(self, model, batch: int, max_len: int, use_graph: bool):
        from .arch import decoder_layers, spec_for_config
        from .placement import execution_device, input_device

        self.model = model
        self.device, self.dtype = input_device(model), _compute_dtype(model)
        layer_devices = [execution_device(layer) for layer in decoder_layers(model, spec_for_config(model.config))]
        self.cache = StaticKV(model.config, batch, max_len, self.dtype, layer_devices)
        self.use_graph = use_graph and self.device.type == "cuda"
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.pos_ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.mask = self.attention_mask(torch.zeros(batch, 1, 1, max_len, dtype=torch.bool, device=self.device),
                                        self.dtype)  # (B, 1, 1, max_len): the keys the next token sees
        # a mask entry for "seen", derived from attention_mask so the boolean A/B (a patched attention_mask that
        # returns its input: tests, gpu_decode_profile.py --bool-mask) opens keys too
        self.seen = self.attention_mask(torch.ones((), dtype=torch.bool), self.dtype).item()
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # view length -> (graph, logits)
        self.graph = None  # the last step's graph

    @staticmethod
    def attention_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of a boolean one (True: the key may be seen): 0 there, -inf elsewhere, as SDPA itself
        turns a boolean mask into a float one, so attention gives the same bits either way."""
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))

    def keys_read(self, t: int) -> int:
        """Keys a step at position ``t`` reads: t + 1 rounded up to the bucket (``view_bucket``)."""
        return min(self.cache.max_len, -(-(t + 1) // self.bucket) * self.bucket)

    def _forward(self, ids, pos_ids, mask, slots):
        self.cache.positions = slots
        self.cache.view_len = mask.shape[-1]
        out = self.model(input_ids=ids, position_ids=pos_ids, attention_mask=mask, past_key_values=self.cache,
                         use_cache=True)
        return out.logits[:, -1].float().to(self.device)  # a spread model's head may sit on another device

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) left-padded prompt tokens; pad: (B, T) True where padding. Returns (B, V) logits."""
        b, t = ids.shape
        valid = torch.zeros(b, self.cache.max_len, dtype=torch.bool, device=self.device)
        valid[:, :t] = ~pad  # (B, max_len) keys that hold real tokens
        self.mask.copy_(self.attention_mask(valid[:, None, None, :], self.dtype))  # each step then adds its own key
        self.next_pos = (~pad).sum(dim=1, keepdim=True)  # (B, 1) position id of the next token
        causal = torch.ones(t, self.cache.max_len, dtype=torch.bool, device=self.device).tril()
        mask = self.attention_mask((causal[None] & valid[:, None, :])[:, None], self.dtype)  # (B, 1, T, max_len)
        pos_ids = ((~pad).cumsum(dim=1) - 1).clamp(min=0)
        self.t = t
        span, layers = self.cache.max_len - t, len(self.cache.keys)
        self.bucket = view_bucket(t, self.cache.max_len, graph_count(span, self.cache.nbytes() / self.cache.max_len,
                                                                     layers))
        return self._forward(ids, pos_ids, mask, torch.arange(t, device=self.device))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B,) the last sampled tokens. Returns (B, V) logits of the next position."""
        if self.t >= self.cache.max_len:
            raise FlexQError(f"the static cache holds {self.cache.max_len} positions and is full",
                             "raise --max-new-tokens' budget (max_len) or shorten the prompt")
        self.mask[..., self.t] = self.seen  # the new token's own key: one fill, the mask is otherwise as it was
        self.ids.copy_(tokens[:, None])
        self.pos_ids.copy_(self.next_pos)
        self.slot.fill_(self.t)
        n = self.keys_read(self.t)
        if not self.use_graph:
            logits = self._forward(self.ids, self.pos_ids, self.mask[..., :n], self.slot)
        else:
            if not self.graphs:
                self._capture()
            self.graph, logits = self.graphs[n]
            self.graph.replay()
        self.t += 1
        self.next_pos += 1
        return logits

    def _capture(self) -> None:
        # One graph per view length from this step's to max_len, sharing one memory pool (they replay one at a time,
        # and each step's logits are read before the next replay). One eager warm-up on a side stream first, at the
        # longest view (allocator, kernel and compile caches; the decode attention's split buffers at their
        # largest, which a capture cannot grow), then the captures, longest first, with no warm-up of their own: the
        # shorter views run the same kernels. Two warm-ups per graph, as before the 26th session, made the first step
        # 1.9-3.3x slower; replays are 0.7-1.6% slower without a warm-up before each capture (docs/generation.md,
        # "What capturing the graphs costs"). The warm-up writes the cache slot the replay will write, so nothing is
        # lost.
        pool = torch.cuda.graph_pool_handle()
        stream = _capture_stream(torch.cuda.current_device() if self.device.index is None else self.device.index)
        lengths = sorted({self.keys_read(t) for t in range(self.t, self.cache.max_len)}, reverse=True)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(self.ids, self.pos_ids, self.mask[..., :lengths[0]], self.slot)
        torch.cuda.current_stream().wait_stream(stream)
        for n in lengths:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.graphs[n] = (graph, self._forward(self.ids, self.pos_ids, self.mask[..., :n], self.slot))


@functools.cache
def _capture_stream(device: int) -> torch.cuda.Stream:
    """The one stream per device that decode graphs are warmed up and captured on. PyTorch keeps a cuBLAS workspace
    per stream it ran on for the life of the process (pytorch/pytorch#99196, where reusing one capture stream is the
    workaround), so a new stream per capture leaked one with every graph (measured on the H100: 32 MiB per generate
    call with one graph, 128 with four). The warm-up runs on the capture stream, so its workspace exists before the
    captures and is not taken from the graphs' pool; the graphs then share it, which is safe because they replay one
    at a time and the warm-up waits for the work queued before it (wait_stream)."""
    return torch.cuda.Stream(device=device)


# keys: the smallest step of the attention's view of the cache. 32, not 64: at batch 16 the step reads less of the
# cache (H100, 2026-11-23, 7B shape, both models in one process, 128 + 256 tokens, two rounds, tok/s 64 -> 32 keys:
# FP16 2397.2-2398.0 -> 2406.1, W6A8 3572.8-3573.4 -> 3591.3-3592.1; batch 1 unchanged, 173.8 and 331.2-331.3),
# with no more graphs (MAX_GRAPHS caps them). 16 keys with 16 graphs: 2409.6-2409.9 and 3601.7-3603.9.
VIEW_BUCKET = 32
MAX_GRAPHS = 8  # view lengths (decode graphs) per generation, at most (one more where view_bucket rounds)
# What a view length costs against what it saves (graph_count), on the H100 machine (2026-11-24, 26th session):
# 8 graphs' first step took 221-380 ms more than one graph's (LLaMA-2-7B W6A8, batch 1, scripts/gpu_graph_count_ab.py),
# 32-54 ms per capture of 32 layers; the bench's copy bandwidth was 2,405-2,428 GB/s.
CAPTURE_S_PER_LAYER = 1.2e-3
KV_READ_BYTES_PER_S = 2.4e12


def graph_count(span: int, kv_bytes_per_position: float, layers: int) -> int:
    """How many view lengths (graphs) a generation of ``span`` decode steps gets: the G that minimizes G captures
    plus the keys read past each step's position. With one view every step reads all ``span`` new positions' keys,
    about span^2 / 2 position reads more than it needs, and G even views cut that by G, so the total is
    G * capture + waste / G, least at G = sqrt(waste / capture). At batch 1 a 7B model's keys are too few to pay for
    a second capture (one graph); batch 16 over 256 steps gets 2; long generations get MAX_GRAPHS."""
    capture = layers * CAPTURE_S_PER_LAYER
    waste = kv_bytes_per_position * span * span / 2 / KV_READ_BYTES_PER_S
    if capture <= 0:
        return MAX_GRAPHS
    return max(1, min(MAX_GRAPHS, round(math.sqrt(waste / capture))))


def view_bucket(start: int, max_len: int, graphs: int = MAX_GRAPHS) -> int:
    """The step of the view lengths of a generation whose first decode step is at position ``start``: VIEW_BUCKET,
    or a multiple of it so that about ``graphs`` lengths cover start .. max_len (at most one more, as the lengths are
    multiples of the step); one graph: max_len, the one view."""
    if graphs <= 1:
        return max_len
    span = -(-(max_len - start) // graphs)
    return max(VIEW_BUCKET, -(-span // VIEW_BUCKET) * VIEW_BUCKET)


def _has_reference_linears(model) -> bool:
    from .modules import QuantLinear

    return any(isinstance(m, QuantLinear) and m.backend == "reference" for m in model.modules())


def _compute_dtype(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("max_new_tokens >= 1, temperature >= 0, top_k >= 0 and 0 < top_p <= 1 are required")


def next_tokens(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) float logits -> (B,) tokens: argmax, or sampling with temperature / top-k / top-p."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > cfg.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=gen)[:, 0]


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (B, T) ids and (B, T) padding mask, padded on the left."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    pad = torch.ones(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p, dtype=torch.long)
        pad[i, t - len(p):] = False
    return ids.to(device), pad.to(device)


def eager_reason(model) -> str | None:
    """Why a CUDA graph cannot hold this model's decode step (None: it can): one graph captures the work of one
    device, and a model spread by accelerate hooks moves tensors between devices (and host memory) each step."""
    from .placement import spread_over

    devices = spread_over(model)
    if devices is None:
        return None
    return f"the model is spread over {', '.join(devices)} (--device-map); a CUDA graph covers one device"


@torch.no_grad()
def generate_tokens(model, prompts: list[list[int]], cfg: SamplingConfig, *, eos_id: int | None = None,
                    use_graph: bool = True, pad_id: int = 0) -> dict:
    """Generate for a batch of token prompts. Returns new tokens per prompt and timings. A model spread over
    several devices decodes eagerly whatever ``use_graph`` says; ``eager_reason`` in the result says why."""
    from .placement import input_device, synchronize

    device = input_device(model)
    reason = eager_reason(model) if use_graph else None
    use_graph = use_graph and reason is None
    ids, pad = left_pad(prompts, pad_id, device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] + cfg.max_new_tokens > limit:
        raise FlexQError(f"prompt ({ids.shape[1]}) + --max-new-tokens ({cfg.max_new_tokens}) exceeds the model's "
                         f"{limit} positions", "shorten the prompt or generate fewer tokens")
    if use_graph and device.type == "cuda" and _has_reference_linears(model):
        raise FlexQError("CUDA-graph decoding needs the btc backend: the reference path checks its inputs on the host",
                         "drop --backend reference, or pass --no-graph to decode eagerly (slow)")
    decoder = Decoder(model, len(prompts), ids.shape[1] + cfg.max_new_tokens, use_graph)
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    sync = (lambda: synchronize(model)) if torch.cuda.is_available() else (lambda: None)
    start = time.perf_counter()
    tokens = next_tokens(decoder.prefill(ids, pad), cfg, gen)
    sync()
    prefill_s = time.perf_counter() - start
    out, done = [tokens], torch.zeros(len(prompts), dtype=torch.bool, device=device)
    start, timed_from, first_step_s = time.perf_counter(), 1, 0.0
    for i in range(cfg.max_new_tokens - 1):
        if cfg.stop_at_eos and eos_id is not None:
            done |= tokens == eos_id
            if bool(done.all()):
                break
        tokens = next_tokens(decoder.step(tokens), cfg, gen)
        out.append(tokens)
        if i == 0:  # the first step also captures the graphs: timed alone, kept out of the decode rate
            sync()
            first_step_s = time.perf_counter() - start
            start, timed_from = time.perf_counter(), 2
    sync()
    decode_s = time.perf_counter() - start
    new = torch.stack(out, dim=1).tolist()
    if cfg.stop_at_eos and eos_id is not None:
        new = [row[: row.index(eos_id) + 1] if eos_id in row else row for row in new]
    timed = len(out) - timed_from
    return {"tokens": new, "prefill_s": prefill_s, "first_step_s": first_step_s, "graphs": len(decoder.graphs),
            "decode_s": decode_s, "decode_steps": len(out) - 1,
            "decode_tok_per_s": timed * len(prompts) / decode_s if timed > 0 else 0.0, "graph": decoder.use_graph,
            "eager_reason": reason}
