"""The generated tokens of an in-process answer, each with its text and the model's log-probability.

:func:`token_texts` splits an answer's text over its tokens so that the pieces join to exactly what
``tokenizer.decode`` gives for the whole answer: decoding is incremental over a short window (as serving
engines do), and a token that ends inside a multi-byte character (byte-level BPE splits UTF-8 bytes) gets
the empty text, its character going to the token that completes it.  :func:`raw_logprobs` reads the
log-probability of each chosen token from the model's raw logits (``output_logits`` of ``generate``),
before any grammar mask: the model's own probability of what it wrote.

torch is imported inside the functions (the edge imports :mod:`models` without it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.backend import TokenLogprob

#: What a decoder writes for bytes that do not (yet) make a whole character.
_REPLACEMENT = "\ufffd"


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=True)) if ids else ""


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str] | None:
    """Split the decoded text of ``ids`` over the tokens; the pieces join to ``tokenizer.decode(ids)``.

    Special tokens get the empty text (they are skipped in the answer), and so does a token that stops
    inside a character.  None when the tokenizer decodes in a way no split can follow (never seen with
    byte-level BPE or SentencePiece, but the caller then says nothing rather than something wrong).
    """
    full = _decode(tokenizer, ids)
    pieces = _windowed(tokenizer, ids)
    if _close(pieces, full):
        return pieces
    pieces = _prefixes(tokenizer, ids)
    return pieces if _close(pieces, full) else None


def _close(pieces: list[str], full: str) -> bool:
    """Give the last token what the pieces lack of ``full`` (a trailing partial character); whether they join."""
    joined = "".join(pieces)
    if not pieces or not full.startswith(joined):
        return not pieces and not full
    pieces[-1] += full[len(joined) :]
    return True


def _windowed(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Incremental decoding over a window that starts one emitted token back (keeps SentencePiece's spaces)."""
    pieces: list[str] = []
    prefix_offset = read_offset = 0
    for end in range(1, len(ids) + 1):
        prefix_text = _decode(tokenizer, ids[prefix_offset:read_offset])
        new_text = _decode(tokenizer, ids[prefix_offset:end])
        if (
            len(new_text) > len(prefix_text)
            and new_text.startswith(prefix_text)
            and not new_text.endswith(_REPLACEMENT)
        ):
            pieces.append(new_text[len(prefix_text) :])
            prefix_offset, read_offset = read_offset, end
        else:
            pieces.append("")
    return pieces


def _prefixes(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decoding every prefix (quadratic; the fallback when the window's pieces do not join)."""
    pieces: list[str] = []
    previous = ""
    for end in range(1, len(ids) + 1):
        current = _decode(tokenizer, ids[:end])
        if current.startswith(previous) and not current.endswith(_REPLACEMENT):
            pieces.append(current[len(previous) :])
            previous = current
        else:
            pieces.append("")
    return pieces


def raw_logprobs(step_logits: Sequence[Any], chosen: Any) -> list[list[float]]:
    """The log-probability of each row's chosen token at each step, from raw logits.

    Parameters
    ----------
    step_logits : sequence of torch.Tensor
        One ``(batch, vocab)`` tensor per generated step (``generate(..., output_logits=True)``).
    chosen : torch.Tensor
        ``(batch, steps)`` token ids generated.

    Returns
    -------
    list of list of float
        ``[row][step]`` natural-log probabilities (log-softmax of the raw logits at the chosen token).
    """
    import torch

    if not step_logits:
        return [[] for _ in range(int(chosen.shape[0]))]
    values = []
    for step, logits in enumerate(step_logits):
        logits = logits.float()
        picked = logits.gather(1, chosen[:, step : step + 1].to(logits.device)).squeeze(1)
        values.append(picked - torch.logsumexp(logits, dim=-1))
    rows: list[list[float]] = torch.stack(values, dim=1).cpu().tolist()
    return rows


def answer_logprobs(tokenizer: Any, ids: Sequence[int], logprobs: Sequence[float]) -> tuple[TokenLogprob, ...]:
    """The answer's tokens with their texts and log-probabilities; empty when either cannot be told.

    ``ids`` are the answer's tokens without the stop token, ``logprobs`` at least as many values (the first
    ``len(ids)`` are used).  A value that is not finite (a model that overflowed) makes the whole answer
    say nothing rather than something wrong.
    """
    texts = token_texts(tokenizer, ids)
    if texts is None or len(logprobs) < len(ids):
        return ()
    values = [float(value) for value in logprobs[: len(ids)]]
    if not all(math.isfinite(value) for value in values):
        return ()
    return tuple(TokenLogprob(text, min(value, 0.0)) for text, value in zip(texts, values, strict=True))
