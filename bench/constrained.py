"""Overhead of schema-bound decoding: tokens/s free, under xgrammar and under lm-format-enforcer.

One model, one prompt (the draft's instruction with the output format; no images, since a grammar costs
per decoded token, not per prompt token), greedy, ``--new-tokens`` new tokens at most, ``--rounds`` rounds
after a warm-up.  Rows:

- ``free``, ``xgrammar``, ``lm-format-enforcer``: ``model.generate`` with the same arguments as the
  in-process backend (``output_logits``, ``return_dict_in_generate``), without a processor, with
  :class:`models.constrained.SchemaLogitsProcessor`, and with lm-format-enforcer's ``TokenEnforcer`` for
  :data:`models.draft_schema.DRAFT_SCHEMA` behind transformers' ``PrefixConstrainedLogitsProcessor``.
  lm-format-enforcer's own transformers module (``lmformatenforcer.integrations.transformers``) does not
  import with transformers 5 (it imports ``transformers.tokenization_utils``, which is gone), so the bench
  builds its tokenizer data with the same code through the library's core API, as that module does.
- ``backend free``, ``backend xgrammar``: the whole in-process path,
  :meth:`models.transformers_backend.TransformersBackend.generate` without and with ``response_schema``
  (prompt rendering, token log-probabilities and texts included).

Compile time is the grammar's first build for the tokenizer (later calls hit the cache).  Tokens/s counts
the tokens each row generated (a random model rarely stops early; every row gets the same budget).

By default the model is the tiny random LLaVA of :mod:`models.smoke` on the CPU (its own step is a few
milliseconds, so the relative overhead is the worst case; its text is noise).  On a lent GPU:
``python -m bench.constrained --model DIR --device cuda`` with a staged checkpoint, or ``--arch
llava-1.5-7b --device cuda`` for the real-size architecture with random weights (staged as
:mod:`bench.gpu_generate` does).

The last line is ``constrained overhead_pct=<x> engine=xgrammar tokens_per_s_free=<a> tokens_per_s_grammar=<b>``
(xgrammar against free, ``model.generate`` rows).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from models.draft_schema import DRAFT_SCHEMA


@dataclass
class Row:
    """One engine's measurement."""

    engine: str
    tokens: int
    seconds: float
    compile_seconds: float | None = None
    note: str = ""

    mask_us_per_token: float | None = None

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def lmfe_processor(tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int]) -> tuple[Any, float]:
    """lm-format-enforcer for the draft schema as a transformers logits processor; and its build time."""
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData  # type: ignore[import-untyped]
    from transformers import PrefixConstrainedLogitsProcessor

    started = time.perf_counter()
    special = set(tokenizer.all_special_ids)
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    regular = []
    for token in range(min(vocab_size, len(tokenizer))):  # lmformatenforcer.integrations.transformers' recipe
        if token in special:
            continue
        after_zero = tokenizer.decode([zero, token])[1:]
        regular.append((token, after_zero, len(after_zero) > len(tokenizer.decode([token]))))

    def decode(tokens: list[int]) -> str:
        return str(tokenizer.decode(tokens)).rstrip("\ufffd")

    data = TokenEnforcerTokenizerData(regular, decode, sorted(stop_token_ids), False, vocab_size)
    enforcer = TokenEnforcer(data, JsonSchemaParser(dict(DRAFT_SCHEMA)))

    def allowed(batch_id: int, sequence: Any) -> list[int]:
        return list(enforcer.get_allowed_tokens(sequence.tolist()).allowed_tokens)

    return PrefixConstrainedLogitsProcessor(allowed, num_beams=1), time.perf_counter() - started


class Timed:
    """A logits processor wrapped to add up the time spent in it (the engine's own per-step cost)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Run the wrapped processor, timed."""
        started = time.perf_counter()
        try:
            return self.processor(input_ids, scores)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def wrap(self, processor: Any) -> Timed:
        """Time a fresh processor (one per ``generate`` call) into this timer."""
        self.processor = processor
        return self

    @property
    def us_per_call(self) -> float | None:
        """Mean microseconds per step (None before any)."""
        return self.seconds / self.calls * 1e6 if self.calls else None


def measure(
    generators: dict[str, Callable[[], int]], rounds: int, synchronize: Callable[[], None]
) -> dict[str, tuple[int, float]]:
    """Warm each up once, then run them in turn ``rounds`` times (a busy machine slows all alike).

    Returns, per name, the tokens of its last run and the median seconds of its runs.
    """
    for generate in generators.values():
        generate()
    times: dict[str, list[float]] = {name: [] for name in generators}
    tokens: dict[str, int] = {}
    for _ in range(rounds):
        for name, generate in generators.items():
            synchronize()
            started = time.perf_counter()
            tokens[name] = generate()
            synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: (tokens[name], statistics.median(times[name])) for name in generators}


def run(backend: Any, new_tokens: int, rounds: int, engines: list[str]) -> list[Row]:
    """Measure each engine on the backend's loaded model."""
    import torch
    from transformers import LogitsProcessorList

    from models.backend import GenerationRequest
    from models.constrained import SchemaLogitsProcessor, compile_schema
    from models.prompts import OUTPUT_FORMAT, SYSTEM_PROMPT, TEMPLATES

    prompt = f"{TEMPLATES[-1].task}\n{OUTPUT_FORMAT}"
    free_request = GenerationRequest("bench", prompt, (), SYSTEM_PROMPT, max_new_tokens=new_tokens)
    bound_request = GenerationRequest(
        "bench", prompt, (), SYSTEM_PROMPT, max_new_tokens=new_tokens, response_schema=DRAFT_SCHEMA
    )
    rendered = backend.render_prompt(free_request)
    loaded = backend._loaded
    tokenizer, model = loaded.processor.tokenizer, loaded.model
    adds_bos = not (tokenizer.bos_token and rendered.startswith(tokenizer.bos_token))
    inputs = tokenizer([rendered], return_tensors="pt", add_special_tokens=adds_bos).to(loaded.device)
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    stops = loaded.stop_token_ids

    def synchronize() -> None:
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()

    def raw(make: Callable[[], Any] | None) -> Callable[[], int]:
        def generate() -> int:
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=loaded.pad_token_id,
                    logits_processor=LogitsProcessorList([make()]) if make else None,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            row = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
            return next((i + 1 for i, token in enumerate(row) if token in stops), len(row))

        return generate

    import xgrammar  # noqa: F401  (imported before the compile is timed)

    generators: dict[str, Callable[[], int]] = {}
    compile_seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    timers: dict[str, Timed] = {}
    if "free" in engines:
        generators["free"] = raw(None)
    if "xgrammar" in engines:
        started = time.perf_counter()
        grammar = compile_schema(tokenizer, DRAFT_SCHEMA, vocab_size=vocab_size, stop_token_ids=stops)
        compile_seconds["xgrammar"] = time.perf_counter() - started
        timers["xgrammar"] = Timed(None)
        generators["xgrammar"] = raw(lambda: timers["xgrammar"].wrap(SchemaLogitsProcessor([grammar])))
    if "lm-format-enforcer" in engines:
        try:
            processor, compile_seconds["lm-format-enforcer"] = lmfe_processor(tokenizer, vocab_size, stops)
        except Exception as exc:  # the engine may not build for a tokenizer; say so in the table
            notes["lm-format-enforcer"] = f"did not build: {type(exc).__name__}: {exc}"
        else:
            timers["lm-format-enforcer"] = Timed(processor)
            generators["lm-format-enforcer"] = raw(lambda: timers["lm-format-enforcer"])
            notes["lm-format-enforcer"] = "core API (see below)"
    if "backend" in engines:
        for name, request in (("backend free", free_request), ("backend xgrammar", bound_request)):

            def through_backend(request: GenerationRequest = request) -> int:
                return int(backend.generate([request])[0].tokens_out)

            generators[name] = through_backend
            notes[name] = "the in-process path"
    measured = measure(generators, rounds, synchronize)
    rows = [
        Row(
            name,
            *measured[name],
            compile_seconds.get(name),
            notes.get(name, ""),
            timers[name].us_per_call if name in timers else None,
        )
        if name in measured
        else Row(name, 0, 0.0, None, notes[name])
        for name in ("free", "xgrammar", "lm-format-enforcer", "backend free", "backend xgrammar")
        if name in measured or name in notes
    ]
    return rows


def stage(args: argparse.Namespace, folder: Path) -> Path:
    """The model directory: ``--model``, a real-size architecture with random weights, or the tiny LLaVA."""
    if args.model is not None:
        return Path(args.model)
    if args.arch is not None:
        import torch

        from bench.gpu_generate import stage_llava

        device = torch.device(args.device if args.device != "auto" else "cuda")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return Path(stage_llava(folder / args.arch, args.toy, device, dtype))
    from models.smoke import build_smoke_model

    return build_smoke_model("llava", folder / "llava")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few tokens and rounds (for the test suite)")
    parser.add_argument("--new-tokens", type=int, default=160, help="new tokens at most per run (default 160)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per engine, median kept (default 5)")
    parser.add_argument("--model", help="a staged checkpoint directory (default: the tiny random LLaVA)")
    parser.add_argument("--arch", choices=("llava-1.5-7b",), help="real-size architecture, random weights")
    parser.add_argument(
        "--toy", action="store_true", help="with --arch: toy sizes (its logits are wider than the tokenizer: padding)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a tiny model's step)")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.rounds = min(args.new_tokens, 24), 1
    import torch

    from models.transformers_backend import TransformersBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    engines = ["free", "xgrammar", "lm-format-enforcer", "backend"]
    console = Console(width=max(Console().width, 132))
    with tempfile.TemporaryDirectory(prefix="pacs-vlm-bench-") as folder:
        directory = stage(args, Path(folder))
        backend = TransformersBackend(directory, device=args.device, max_new_tokens=args.new_tokens)
        backend.load()
        rows = run(backend, args.new_tokens, args.rounds, engines)
        title = (
            f"constrained decoding: {directory.name} on {backend.device} {backend.dtype}, greedy, "
            f"{args.new_tokens} new tokens at most, median of {args.rounds}"
        )
    baselines = {row.engine: row.tokens_per_s for row in rows if row.engine in ("free", "backend free")}
    table = Table(
        "engine", "tokens", "seconds", "tokens/s", "overhead %", "mask µs/token", "compile s", "note", title=title
    )
    for row in rows:
        base = baselines.get("backend free" if row.engine.startswith("backend") else "free")
        overhead = f"{(base / row.tokens_per_s - 1) * 100:.1f}" if base and row.tokens_per_s else "-"
        compiled = f"{row.compile_seconds:.3f}" if row.compile_seconds is not None else "-"
        rate = f"{row.tokens_per_s:.1f}" if row.seconds else "-"
        mask = f"{row.mask_us_per_token:.0f}" if row.mask_us_per_token is not None else "-"
        table.add_row(row.engine, str(row.tokens), f"{row.seconds:.3f}", rate, overhead, mask, compiled, row.note)
    console.print(table)
    console.print(
        "lm-format-enforcer runs through its core API (TokenEnforcer + JsonSchemaParser behind transformers' "
        "PrefixConstrainedLogitsProcessor): its own transformers module does not import with transformers 5."
    )
    free = next(row for row in rows if row.engine == "free")
    grammar = next(row for row in rows if row.engine == "xgrammar")
    overhead_pct = (free.tokens_per_s / grammar.tokens_per_s - 1) * 100
    print(
        f"constrained overhead_pct={overhead_pct:.1f} engine=xgrammar "
        f"tokens_per_s_free={free.tokens_per_s:.1f} tokens_per_s_grammar={grammar.tokens_per_s:.1f}"
    )


if __name__ == "__main__":
    main()
