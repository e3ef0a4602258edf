"""``pacs-vlm report``: a report's draft SR, its versions, and signing from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from integration.cli import console, fail, load_settings
from integration.config import Settings

if TYPE_CHECKING:
    from integration.store.revisions import RevisionRecord

report_app = typer.Typer(
    help="Reports: the draft's DICOM SR, the versions, signing (a new, verified SR), rejecting.", no_args_is_help=True
)

ReportId = Annotated[int, typer.Argument(help="The report's id (see 'pacs-vlm report show' or the demo's table).")]


@contextmanager
def _database() -> Iterator[None]:
    """Turn a database that is unreachable or has no schema into one readable line (no traceback)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise fail(f"database not usable ({reason}): is it running, and did 'pacs-vlm db upgrade' run?") from None


def _edits(path: Path | None) -> tuple[list[dict[str, Any]] | None, str | None, str | None, str | None]:
    """Findings (and impression, limitations, comparison) from a JSON file: a list of findings or a document."""
    if path is None:
        return None, None, None, None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{path} is not valid JSON: {exc}", 2) from None
    if isinstance(document, list):
        return document, None, None, None
    if isinstance(document, dict) and "findings" in document:
        texts = {key: document.get(key) for key in ("impression", "limitations", "comparison")}
        if any(value is not None and not isinstance(value, str) for value in texts.values()):
            raise fail(f"{path}: impression, limitations and comparison must be strings", 2)
        return document["findings"], texts["impression"], texts["limitations"], texts["comparison"]
    raise fail(f'{path} must hold a list of {{"text", "images"}} findings or an object with "findings"', 2)


@report_app.command("sign")
def sign_command(
    report_id: ReportId,
    author: Annotated[str, typer.Option(help='The signing radiologist as a DICOM person name, e.g. "Doe^Jane".')],
    organization: Annotated[str, typer.Option(help="The radiologist's organization (at most 64 characters).")],
    findings_file: Annotated[
        Path | None,
        typer.Option(
            help='Edited findings: a JSON list of {"text": ..., "images": [1, 2]} or a findings document '
            '({"findings": [...], "impression": ..., "limitations": ..., "comparison": ...}). Unedited parts stay '
            "as they were."
        ),
    ] = None,
    impression: Annotated[str | None, typer.Option(help="Edited impression.")] = None,
    limitations: Annotated[str | None, typer.Option(help="Edited limitations.")] = None,
    comparison: Annotated[str | None, typer.Option(help="Edited comparison with the prior studies.")] = None,
) -> None:
    """Sign a report: store the next version and its verified SR (COMPLETE, VERIFIED), which references the last."""
    edits = _edits(findings_file)
    settings = load_settings()
    from integration.reports.review import record_signed_outcome

    with _database():
        revision = _sign(settings, report_id, author, organization, edits, (impression, limitations, comparison))
        outcome = record_signed_outcome(settings, report_id, revision.revision_id, actor=author, source="cli")
    console.print(f"report {report_id}: version {revision.version} signed (revision {revision.revision_id})")
    console.print(
        f"compared with the draft: {outcome.accepted} accepted, {outcome.edited} edited, "
        f"{outcome.rejected} rejected, {outcome.added} added (text similarity {outcome.text_similarity:.2f})"
    )
    from integration.export.outbox import queue_deliveries

    queued = queue_deliveries(settings, report_id, revision.revision_id, "signed")
    if queued:
        console.print(f"{len(queued)} deliveries queued: {', '.join(map(str, queued))}")
    typer.echo(settings.data_dir / revision.sr_path if revision.sr_path else "")


def _sign(
    settings: Settings,
    report_id: int,
    author: str,
    organization: str,
    edits: tuple[list[dict[str, Any]] | None, str | None, str | None, str | None],
    texts: tuple[str | None, str | None, str | None],
) -> RevisionRecord:
    """Sign and return the new version; errors become readable exits."""
    from integration.reports.drafts import SourceUnavailable, prepare_signature
    from integration.reports.review import add_signed_outcome
    from integration.store.revisions import UnknownReport, VersionTaken, report_revisions
    from integration.store.session import session_scope

    findings, *from_file = edits
    pairs = zip(texts, from_file, strict=True)
    impression, limitations, comparison = (typed if typed is not None else read for typed, read in pairs)
    try:
        prepared = prepare_signature(
            settings,
            report_id,
            author=author,
            organization=organization,
            findings=findings,
            impression=impression,
            limitations=limitations,
            comparison=comparison,
        )
        with prepared.recorded() as (session, report, revision_id):
            add_signed_outcome(session, report, revision_id, actor=author, source="cli")
    except (UnknownReport, ValueError) as exc:
        raise fail(str(exc), 2) from None
    except (SourceUnavailable, VersionTaken) as exc:
        raise fail(str(exc)) from None
    with session_scope(settings.database_url) as session:
        return next(r for r in report_revisions(session, report_id) if r.revision_id == revision_id)


@report_app.command("reject")
def reject_command(
    report_id: ReportId,
    reason: Annotated[str, typer.Option(help="Why the draft is rejected (stored with the rejected version).")],
    author: Annotated[str, typer.Option(help="Who rejects it (stored as the rejected version's author).")],
) -> None:
    """Reject a draft as a whole: a rejected version holding the reason, no SR; receivers that got it are told."""
    from integration.export.corrections import withdraw_reports
    from integration.reports.review import reject_draft
    from integration.store.revisions import UnknownReport

    settings = load_settings()
    with _database():
        try:
            revision_id = reject_draft(settings, report_id, actor=author, reason=reason, source="cli")
        except (UnknownReport, ValueError) as exc:
            raise fail(str(exc), 2) from None
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        withdrawals = withdraw_reports(settings, [report_id], "rejected")
    console.print(f"report {report_id}: draft rejected (revision {revision_id})")
    if withdrawals:
        console.print(f"withdrawals queued: {', '.join(map(str, withdrawals))}")


@report_app.command("sr")
def sr_command(report_id: ReportId) -> None:
    """Write the draft's SR (PARTIAL, UNVERIFIED) if it is not there yet, and print its path."""
    from integration.reports.drafts import SourceUnavailable, ensure_draft_sr
    from integration.store.revisions import UnknownReport

    settings = load_settings()
    with _database():
        try:
            path = ensure_draft_sr(settings, report_id)
        except UnknownReport as exc:
            raise fail(str(exc), 2) from None
        except SourceUnavailable as exc:
            raise fail(str(exc)) from None
    typer.echo(path)


@report_app.command("show")
def show_command(report_id: ReportId) -> None:
    """Show a report: its draft findings, impression and limitations, and every signed version."""
    from integration.store.revisions import UnknownReport, load_report, report_revisions
    from integration.store.session import session_scope

    settings = load_settings()
    with _database():
        try:
            with session_scope(settings.database_url) as session:
                report = load_report(session, report_id)
                revisions = report_revisions(session, report_id)
        except UnknownReport as exc:
            raise fail(str(exc), 2) from None
    out = Console()
    out.print(
        Text(
            f"report {report.report_id}: {report.status}, study {report.study_uid} (version {report.study_version}); "
            f"model {report.model_id} ({report.model_revision}), prompt {report.prompt_version}"
        )
    )
    out.print(Text(f"draft SR: {settings.data_dir / report.sr_path if report.sr_path else 'not written yet'}"))
    _print_content(out, "draft (v1, AI-generated, unverified)", report.findings)
    for revision in revisions:
        when = revision.created_at.strftime("%Y-%m-%d %H:%M UTC")
        title = f"v{revision.version} {revision.status} by {revision.author}, {revision.organization}, {when}"
        _print_content(out, title, revision.findings)
        out.print(Text(f"SR: {settings.data_dir / revision.sr_path if revision.sr_path else '-'}"))


def _print_content(out: Console, title: str, stored: object) -> None:
    """Print a stored findings document; its text is untrusted (model output), so never read as markup."""
    from integration.findings import Document

    document = Document.read(stored)
    table = Table("#", "finding", "images", title=Text(title), title_justify="left")
    for number, finding in enumerate(document.findings, start=1):
        table.add_row(str(number), Text(finding.text), ", ".join(map(str, finding.images)) or "-")
    out.print(table)
    sections = (("Impression", document.impression), ("Limitations", document.limitations))
    for heading, text in (*sections, ("Comparison", document.comparison_text)):
        if text:
            out.print(Text(f"{heading}: {text}"))


@report_app.command("confidence")
def confidence_command(
    since_days: Annotated[
        float | None,
        typer.Option(
            "--since-days", min=0, help="Count only reports first reviewed in the last N days (default: all)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """Acceptance of draft findings by confidence band, per model revision and prompt version.

    From the review outcomes (a report's first review): of the draft findings with a confidence score in each
    band, how many the radiologist accepted unedited, edited or rejected. The score is the model's confidence
    in its wording, not a probability that a finding is right; this table shows whether it tells anything.
    """
    from datetime import UTC, datetime, timedelta

    from integration.reports.confidence_bands import acceptance_by_band
    from integration.store.session import session_scope

    settings = load_settings()
    low, high = settings.confidence_low, settings.confidence_high
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days is not None else None
    with _database(), session_scope(settings.database_url) as session:
        rows = acceptance_by_band(session.connection(), low, high, since=since)
    if as_json:
        fields = ("model_id", "model_revision", "prompt_version", "band", "reviewed", "accepted", "edited", "rejected")
        entries = [
            {name: getattr(row, name) for name in fields} | {"acceptance_rate": row.acceptance_rate} for row in rows
        ]
        typer.echo(json.dumps({"confidence_low": low, "confidence_high": high, "rows": entries}, indent=2))
        return
    ranges = {"low": f"< {low:g}", "medium": f"{low:g} to < {high:g}", "high": f">= {high:g}"}
    table = Table(
        "model", "revision", "prompt", "band", "score", "reviewed", "accepted", "edited", "rejected", "acceptance",
        title=Text("Draft findings by confidence band (a report's first review)"),
        title_justify="left",
        caption=Text(
            "The score is the model's confidence in its own wording, not a probability that a finding is right."
        ),
        caption_justify="left",
    )  # fmt: skip
    for row in rows:
        rate = "-" if row.acceptance_rate is None else f"{row.acceptance_rate:.0%}"
        counts = (row.reviewed, row.accepted, row.edited, row.rejected)
        table.add_row(
            Text(row.model_id), Text(row.model_revision), Text(row.prompt_version), row.band, ranges[row.band],
            *map(str, counts), rate,
        )  # fmt: skip
    out = Console()
    if not rows:
        out.print("No reviewed draft finding has a confidence score yet.")
        return
    out.print(table)


@report_app.command("shadow")
def shadow_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """Shadow mode: how each candidate model's hidden drafts agree with the signed reports.

    One row per model revision and prompt version of a routing rule's shadow model: the drafts compared with
    a signed report, their findings kept as written, reworded or absent from the signed report, the signed
    findings they missed, the finding agreement (shared / either) and the mean text similarity.
    """
    from integration.store.session import session_scope
    from integration.store.shadow import shadow_summaries

    settings = load_settings()
    with _database(), session_scope(settings.database_url) as session:
        rows = shadow_summaries(session)
    if as_json:
        entries = [{**row.__dict__, "finding_agreement": row.finding_agreement} for row in rows]
        typer.echo(json.dumps({"rows": entries}, indent=2))
        return
    out = Console()
    if not rows:
        out.print("No shadow draft was compared with a signed report yet.")
        return
    table = Table(
        "model", "revision", "prompt", "compared", "accepted", "edited", "rejected", "missed", "agreement",
        "similarity",
        title=Text("Shadow drafts vs the signed reports"),
        title_justify="left",
    )  # fmt: skip
    for row in rows:
        counts = (row.outcomes, row.accepted, row.edited, row.rejected, row.added)
        table.add_row(
            Text(row.model_id), Text(row.model_revision), Text(row.prompt_version), *map(str, counts),
            f"{row.finding_agreement:.0%}", f"{row.text_similarity_mean:.2f}",
        )  # fmt: skip
    out.print(table)
