"""Schema-bound decoding in process: every generated token is one the draft's JSON schema allows.

A request with a ``response_schema`` (:data:`models.draft_schema.DRAFT_SCHEMA`) is decoded under a grammar
compiled from it with xgrammar: at each step a :class:`SchemaLogitsProcessor` asks a grammar matcher
which tokens may come next and sets the logits of the others to minus infinity, so greedy decoding picks
the model's most likely *allowed* token.  The answer is JSON that follows the schema, unless the token
limit cuts it short (then the lenient parser of :mod:`models.draft` reads what there is).

Why xgrammar
------------
It is the engine vLLM and SGLang use by default, it is maintained, it compiles the schema once per
tokenizer into a token-mask automaton (a few milliseconds for the tiny models, cached per tokenizer) and
fills a step's mask in C++ in microseconds, with no dependency on the transformers version.  Measured
with ``python -m bench.constrained`` (tiny random LLaVA, 768-token vocabulary, CPU, greedy, 160 new tokens,
median of 5, on a shared 2-core machine; ``bench/RESULTS.md``): the engine's own time per token was
110-180 us for xgrammar against 340-720 us for lm-format-enforcer (3-4 times as much, Python per step),
and decoding ran 13-19 % slower than free under xgrammar against 28-46 % under lm-format-enforcer, on a
model whose own step is only 2-4 ms (a real-size model's step is tens of ms, so the relative overhead
shrinks accordingly).  The grammar compiles in 5-7 ms for that tokenizer and is then cached.  Both
engines' tokenizer preprocessing grows with the vocabulary (128k-262k tokens for the real families), in
C++ for xgrammar and in Python (two decodes per token) for lm-format-enforcer, whose transformers module
does not even import with transformers 5.  outlines is not a locked dependency and was not measured.

xgrammar's bounded strings (``maxLength``) take any character but a quote, a backslash, CR or LF (control
characters included, no escapes): :func:`models.draft.parse_draft` reads JSON with ``strict=False`` and
removes the controls.

Property order
--------------
The grammar makes the model write the properties in the order the schema declares them (findings before
the impression; a finding's text before its laterality, region, certainty and urgency), so the schema is
compiled from its declaration order, not from :func:`models.draft_schema.draft_schema_json` (whose keys
are sorted for a stable wire form and would put ``comparison`` first and the finding's ``text`` after its
attributes).

Everything heavy (torch, xgrammar) is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

#: The grammar engine, recorded by the bench and said in the docs.
ENGINE = "xgrammar"

_lock = threading.Lock()
#: Per tokenizer (weakly held): {(vocab size, stop token ids): _Compiler}.
_compilers: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], _Compiler]] = weakref.WeakKeyDictionary()


def schema_text(schema: Mapping[str, Any]) -> str:
    """The schema as compact JSON in its declaration order (the order the grammar makes the model write)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


class _Compiler:
    """One tokenizer's grammar compiler and the grammars compiled with it (keyed by schema text)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> None:
        import xgrammar as xgr

        stops = list(stop_token_ids) or None
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.grammars: dict[str, Any] = {}

    def grammar(self, text: str) -> Any:
        if text not in self.grammars:
            self.grammars[text] = self.compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
        return self.grammars[text]


def compile_schema(
    tokenizer: Any, schema: Mapping[str, Any], *, vocab_size: int, stop_token_ids: Collection[int] = ()
) -> Any:
    """Compile a JSON schema for a tokenizer (cached per tokenizer, vocabulary size, stop tokens and schema).

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The model's tokenizer (a fast tokenizer; byte-level BPE and SentencePiece vocabularies both work).
    schema : Mapping
        The JSON schema; compiled in its declaration order.
    vocab_size : int
        Width of the model's logits (may exceed the tokenizer's vocabulary: padded embeddings).
    stop_token_ids : collection of int
        Tokens that end the answer (the model's end-of-turn and end-of-sequence); the grammar allows them only
        once the JSON is complete.  Empty: the tokenizer's own.

    Returns
    -------
    xgrammar.CompiledGrammar
        The compiled grammar, shared by later calls (it is immutable; matchers are per generation).

    Raises
    ------
    ValueError
        When ``vocab_size`` is not positive.
    RuntimeError
        From xgrammar, when the schema uses a construct it cannot compile.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, not {vocab_size}")
    key = (int(vocab_size), tuple(sorted(int(token) for token in stop_token_ids)))
    text = schema_text(schema)
    with _lock:
        per_tokenizer = _compilers.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = _Compiler(tokenizer, *key)
        return per_tokenizer[key].grammar(text)


def _mask_backend(device_type: str) -> Literal["cpu", "triton", "torch_native"]:
    """The xgrammar kernel for logits on this device: triton on a GPU where it is installed, else torch's own ops."""
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch_native"


class SchemaLogitsProcessor:
    """A transformers logits processor binding each row of one ``generate`` call to its own grammar (or none).

    Use one per ``generate`` call (its matchers follow that call's tokens).  Rows whose grammar is None are
    left free; a row whose grammar has ended (its stop token accepted) is no longer masked.

    Parameters
    ----------
    grammars : sequence of xgrammar.CompiledGrammar or None
        One per batch row, in row order.

    Raises
    ------
    ValueError
        From a call, when the batch has another number of rows than ``grammars``.
    """

    def __init__(self, grammars: Sequence[Any | None]) -> None:
        self._grammars = list(grammars)
        self._matchers: list[Any | None] | None = None
        self._bitmask: Any = None
        self._device_mask: Any = None
        #: Rows whose model token the matcher refused (never expected; the row is then left free).
        self.broken_rows: set[int] = set()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Accept each row's last token; return the next step's logits with the disallowed tokens at minus infinity.

        The logits are masked in a copy: transformers keeps the tensor it passes here as the step's raw logits
        (``output_logits``), from which the answer's log-probabilities are read.
        """
        import xgrammar as xgr

        rows = int(input_ids.shape[0])
        if rows != len(self._grammars):
            raise ValueError(f"the batch has {rows} rows, the processor {len(self._grammars)} grammars")
        if self._matchers is None:
            self._matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in self._grammars]
            self._bitmask = xgr.allocate_token_bitmask(rows, int(scores.shape[-1]))
        else:
            last = input_ids[:, -1].tolist()
            for row, matcher in enumerate(self._matchers):
                if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(int(last[row])):
                    self.broken_rows.add(row)
                    self._matchers[row] = None
        active = [row for row, m in enumerate(self._matchers) if m is not None and not m.is_terminated()]
        if not active:
            return scores
        for row in active:
            matcher = self._matchers[row]
            assert matcher is not None
            matcher.fill_next_token_bitmask(self._bitmask, row)
        scores = scores.clone()
        bitmask = self._bitmask
        if scores.device.type != "cpu":
            bitmask = bitmask.to(scores.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(
            scores, bitmask, vocab_size=int(scores.shape[-1]), indices=active, backend=_mask_backend(scores.device.type)
        )
        return scores
