"""``pacs-vlm eval``: run a configured model over a VQA set and over report pairs, and print the scores.

``pacs-vlm eval vqa FILE...`` asks the model every question of VQA files in the VQA-RAD, SLAKE or
PathVQA layout and prints closed-ended accuracy and open-ended recall per file;
``pacs-vlm eval reports FILE...`` scores drafts (given, or drafted by the model from images) against
reference reports: ROUGE-L and finding-level agreement.  The model is the worker's
(``PACSVLM_MODEL``, a ``PACSVLM_MODELS`` key with ``--model-name``, or ``PACSVLM_MODEL_SERVER_URL``)
or a folder given with ``--model``.  Per-item results go to ``--output`` as JSON Lines, written as
each batch finishes.  Bad input exits with status 2 and one line saying what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.progress import Progress

    from models.backend import VisionLanguageBackend
    from models.evaluation.runner import SetScores

eval_app = typer.Typer(
    help="Evaluate a model: VQA accuracy and draft-vs-reference report agreement.", no_args_is_help=True
)

_out = Console()
_err = Console(stderr=True)

ImagesOption = Annotated[
    Path | None,
    typer.Option(
        "--images", help="Folder of the images (default: images/ or imgs/ beside each file, else its folder)."
    ),
]
ModelOption = Annotated[
    Path | None, typer.Option("--model", help="A staged model folder (default: the worker's configured model).")
]
ModelNameOption = Annotated[
    str | None, typer.Option("--model-name", help="A PACSVLM_MODELS key instead of the default model.")
]
LimitOption = Annotated[int | None, typer.Option("--limit", min=1, help="Score at most N items per file.")]
OutputOption = Annotated[
    Path | None, typer.Option("--output", help="Write one JSON line per item here (results.jsonl).")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _backend(model: Path | None, model_name: str | None) -> VisionLanguageBackend:
    """Load the model the command names, or exit with the reason."""
    from integration.cli import load_settings
    from models.backend import ModelNotStaged
    from worker.backends import UnknownModel, model_backend

    if model is not None and model_name is not None:
        raise _fail("give --model or --model-name, not both")
    settings = load_settings()
    if model is not None:
        settings = settings.model_copy(update={"model": model, "model_server_url": None})
    try:
        backend, _ = model_backend(settings, model_name)
    except (ModelNotStaged, UnknownModel, ValueError) as exc:
        raise _fail(str(exc)) from None
    return backend


@contextmanager
def _results_file(output: Path | None) -> Iterator[IO[str] | None]:
    if output is None:
        yield None
        return
    if not output.parent.is_dir():
        raise _fail(f"cannot write {output}: folder {output.parent} does not exist")
    try:
        handle = output.open("w", encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror}") from None
    with handle:
        yield handle


def _writer(handle: IO[str] | None, set_name: str, progress: Progress, task: Any) -> Callable[[list[Any]], None]:
    def write(results: list[Any]) -> None:
        if handle is not None:
            for result in results:
                handle.write(json.dumps(result.as_json(set_name), ensure_ascii=False) + "\n")
            handle.flush()
        progress.advance(task, len(results))

    return write


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _print_table(rows: Sequence[SetScores], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("set", "n", "closed acc. %", "open recall %", "ROUGE-L %", "agreement %"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for row in rows:
        closed = f"{_percent(row.closed_accuracy)} ({row.closed_n})" if row.closed_n else "-"
        recall = f"{_percent(row.open_recall)} ({row.open_n})" if row.open_n else "-"
        table.add_row(escape(row.name), str(row.n), closed, recall, _percent(row.rouge_l), _percent(row.agreement))
    _out.print(table)


def _weighted(rows: Sequence[SetScores], value: str, count: str) -> tuple[float | None, int]:
    pairs = [(getattr(row, value), getattr(row, count)) for row in rows if getattr(row, value) is not None]
    total = sum(n for _, n in pairs)
    return (sum(v * n for v, n in pairs) / total if total else None), total


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_err
    )


@eval_app.command("vqa")
def vqa(
    datasets: Annotated[
        list[Path], typer.Argument(help="VQA files: JSON list or JSON Lines in the VQA-RAD, SLAKE or PathVQA layout.")
    ],
    images: ImagesOption = None,
    layout: Annotated[
        str, typer.Option("--format", help="Layout: auto (from the keys), vqa-rad, slake or pathvqa.")
    ] = "auto",
    language: Annotated[
        str, typer.Option("--language", help="Keep questions in this language (SLAKE q_lang): en, zh or all.")
    ] = "en",
    model: ModelOption = None,
    model_name: ModelNameOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per generate call.")] = 8,
    limit: LimitOption = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Answer length cap.")] = 64,
    output: OutputOption = None,
) -> None:
    """Ask the model every question of VQA files; print closed-ended accuracy and open-ended recall."""
    from models.evaluation.datasets import VQA_FORMATS, DatasetError, load_vqa
    from models.evaluation.runner import VQA_PROMPT, check_images, run_vqa, vqa_scores

    if layout not in ("auto", *VQA_FORMATS):
        raise _fail(f"unknown --format {layout!r}: use auto, {', '.join(VQA_FORMATS)}")
    try:
        sets = [load_vqa(path, image_folder=images, layout=layout, language=language, limit=limit) for path in datasets]
        check_images([item.image for vqa_set in sets for item in vqa_set.items])
    except DatasetError as exc:
        raise _fail(str(exc)) from None
    backend = _backend(model, model_name)
    rows = []
    with _results_file(output) as handle, _progress() as progress:
        for vqa_set in sets:
            task = progress.add_task(escape(vqa_set.name), total=len(vqa_set.items))
            try:
                predictions = run_vqa(
                    backend,
                    vqa_set.items,
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    progress=_writer(handle, vqa_set.name, progress, task),
                )
            except DatasetError as exc:
                raise _fail(str(exc)) from None
            rows.append(vqa_scores(vqa_set.name, predictions))
    identity = backend.identity
    _print_table(rows, f"VQA: {escape(identity.model_id)} ({VQA_PROMPT.key})")
    closed, closed_n = _weighted(rows, "closed_accuracy", "closed_n")
    recall, open_n = _weighted(rows, "open_recall", "open_n")
    _out.print(
        f"eval vqa: {len(rows)} set(s), {sum(r.n for r in rows)} items, closed accuracy {_percent(closed)}% "
        f"(n={closed_n}), open recall {_percent(recall)}% (n={open_n}), model {escape(identity.model_id)}",
        highlight=False,
    )


@eval_app.command("reports")
def reports(
    pairs: Annotated[
        list[Path],
        typer.Argument(
            help="Report pair files: JSON list or JSON Lines of {reference, draft} or {reference, images} "
            "objects, or [draft, reference] lists."
        ),
    ],
    images: ImagesOption = None,
    model: ModelOption = None,
    model_name: ModelNameOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Reports per generate call.")] = 4,
    limit: LimitOption = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Draft length cap.")] = 512,
    output: OutputOption = None,
) -> None:
    """Score drafts against reference reports: ROUGE-L and finding-level agreement."""
    from integration.reports.agreement import compare_drafts
    from models.evaluation.datasets import DatasetError, load_report_pairs
    from models.evaluation.runner import check_images, report_scores, run_reports

    try:
        sets = [(path.stem, load_report_pairs(path, image_folder=images, limit=limit)) for path in pairs]
        check_images([image for _, loaded in sets for pair in loaded for image in pair.images])
    except DatasetError as exc:
        raise _fail(str(exc)) from None
    needs_model = any(pair.draft is None for _, loaded in sets for pair in loaded)
    backend = _backend(model, model_name) if needs_model else None
    rows = []
    with _results_file(output) as handle, _progress() as progress:
        for name, loaded in sets:
            task = progress.add_task(escape(name), total=len(loaded))
            try:
                scores = run_reports(
                    backend,
                    loaded,
                    compare=lambda a, b: compare_drafts(a, b).score,
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    progress=_writer(handle, name, progress, task),
                )
            except DatasetError as exc:
                raise _fail(str(exc)) from None
            rows.append(report_scores(name, scores))
    model_id = backend.identity.model_id if backend is not None else "drafts as given"
    _print_table(rows, f"Reports: {escape(model_id)}")
    rouge, n = _weighted(rows, "rouge_l", "n")
    agreement, _ = _weighted(rows, "agreement", "n")
    _out.print(
        f"eval reports: {len(rows)} set(s), {n} pairs, ROUGE-L {_percent(rouge)}%, "
        f"finding agreement {_percent(agreement)}%, model {escape(model_id)}",
        highlight=False,
    )
