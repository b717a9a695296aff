"""Text data sets for calibration and evaluation, offline first.

``wikitext2`` and ``c4`` resolve, in order, to files under ``$FLEXQ_DATA_DIR`` and then to the Hugging Face hub
(through the optional ``datasets`` package). Anything else is a path to a text file.

Local layout under ``$FLEXQ_DATA_DIR``:
  wikitext-2-raw/wiki.{test,train}.raw   one row per line (CRLF or LF); rows are joined with "\\n\\n"
  c4/c4-{validation,train}.txt           documents, one per line; joined with " "
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import FlexQError

NAMED = ("wikitext2", "c4")
C4_EVAL_DOCS = 1100  # the GPTQ protocol's slice of the C4 validation shard


def load_text(name: str, split: str) -> str:
    """The text of data set ``name`` (``split``: "test" for evaluation, "train" for calibration)."""
    if name not in NAMED:
        path = Path(name).expanduser()
        if not path.is_file():
            raise FlexQError(f"data '{name}' is neither {' nor '.join(NAMED)} nor a readable file",
                             "pass wikitext2, c4, or the path of a text file")
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    local = _local_file(name, split)
    if local is not None:
        rows = local.read_text(encoding="utf-8").replace("\r\n", "\n").splitlines(keepends=True)
        return ("\n\n" if name == "wikitext2" else " ").join(r if name == "wikitext2" else r.strip() for r in rows)
    return _hub_text(name, split)


def _local_file(name: str, split: str) -> Path | None:
    root = os.environ.get("FLEXQ_DATA_DIR")
    if not root:
        return None
    split_c4 = "validation" if split == "test" else "train"
    path = Path(root) / ("wikitext-2-raw/wiki.%s.raw" % split if name == "wikitext2" else f"c4/c4-{split_c4}.txt")
    return path if path.is_file() else None


def _hub_text(name: str, split: str) -> str:
    where = os.environ.get("FLEXQ_DATA_DIR") or "$FLEXQ_DATA_DIR (unset)"
    hint = f"put the file under {where} (see `flexq eval --help`) or pass a text file path"
    try:
        import datasets
    except ImportError:
        raise FlexQError(f"{name} ({split}) is not in {where} and the 'datasets' package is missing", hint) from None
    try:
        if name == "wikitext2":
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return "\n\n".join(rows)
        shard = "validation.00000-of-00008" if split == "test" else "train.00000-of-01024"
        ds = datasets.load_dataset("allenai/c4", data_files={"x": f"en/c4-{shard}.json.gz"}, split="x")
        return " ".join(ds["text"][:C4_EVAL_DOCS] if split == "test" else ds["text"][:20000])
    except Exception as exc:
        raise FlexQError(f"{name} ({split}) could not be loaded from the hub ({type(exc).__name__})", hint) from exc


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """(T,) int64 token ids of the whole text, as the standard PPL protocol tokenizes it (one call)."""
    return tokenizer(text, return_tensors="pt").input_ids[0]


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """(W, seqlen) non-overlapping windows from the start; a short tail is dropped."""
    n = tokens.numel() // seqlen
    if n == 0:
        raise FlexQError(f"the text has {tokens.numel()} tokens, fewer than one window of {seqlen}",
                         "use a smaller --seqlen or a longer text")
    if max_windows:
        n = min(n, max_windows)
    return tokens[: n * seqlen].reshape(n, seqlen)


def calibration_samples(tokens: torch.Tensor, samples: int, seqlen: int, seed: int, offset: int = 0):
    """(samples, seqlen) windows at seeded random start positions in tokens[offset:]."""
    usable = tokens.numel() - offset - seqlen
    if usable <= 0:
        raise FlexQError(f"the text has {tokens.numel()} tokens: too few for --seqlen {seqlen} after "
                         f"--offset-tokens {offset}", "use a longer text, a smaller --seqlen or offset")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, usable + 1, (samples,), generator=gen) + offset
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
