"""``pacs-vlm studies``: the studies received and their states; failed analyses retried or re-run.

``retry`` and ``reanalyze`` do what the ``/admin/work`` page's buttons do (:mod:`integration.failed_work`),
audited with the operator (``cli:<user>``) as the actor.  A failed study re-analysed with a chosen model or
prompt gets its primary analysis again; any other study gets a second opinion beside its report of record.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from integration.cli import fail, load_settings, operator
from integration.cli.jobs import SinceOption, SiteOption, parse_since, shown

studies_app = typer.Typer(help="Studies received and their states.", no_args_is_help=True)

#: The study argument of the commands that act on one study.
StudyArgument = Annotated[str, typer.Argument(help="Study Instance UID.")]


@studies_app.command("list")
def studies_list(
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Most recent studies to show.")] = 50,
    state: Annotated[
        str | None, typer.Option(help="Only this state (receiving, stable, queued, running, drafted, failed ...).")
    ] = None,
    site: SiteOption = None,
    since: SinceOption = None,
) -> None:
    """List the most recently received studies with their state, version and counts (failed: with why)."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.queries import study_summaries
    from integration.store.session import session_scope
    from integration.store.tables import StudyState
    from integration.store.work import WorkFilter, failed_studies, study_uids

    settings = load_settings()
    try:
        wanted = StudyState(state) if state is not None else None
    except ValueError:
        raise fail(f"unknown state {state!r}: use {', '.join(s.value for s in StudyState)}", 2) from None
    where = WorkFilter(site, parse_since(settings, since), limit)
    filtered = wanted is not None or site is not None or since is not None
    try:
        with session_scope(settings.database_url) as session:
            uids = study_uids(session, wanted, where) if filtered else None
            rows = study_summaries(session, limit, uids)
            failed = wanted is StudyState.FAILED
            failures = {row.study_uid: row for row in failed_studies(session, where)} if failed else {}
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    columns = ["study UID", "state", "version", "series", "instances", "calling AE", "last received"]
    if wanted is StudyState.FAILED:
        columns += ["failed (UTC)", "attempts", "reason"]
    table = Table(*columns)
    for row in rows:
        cells: list[str | Text] = [
            row.study_uid,
            row.state,
            str(row.version),
            str(row.series),
            str(row.instances),
            Text(row.calling_ae),
            row.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        if wanted is StudyState.FAILED:
            failure = failures.get(row.study_uid)
            cells += (
                [shown(failure.failed_at), str(failure.attempts), Text(failure.reason)] if failure else ["-", "-", ""]
            )
        table.add_row(*cells)
    Console().print(table)


@studies_app.command("retry")
def studies_retry(study_uid: StudyArgument) -> None:
    """Queue a failed study's analysis again (once its cause is fixed); audited as study.retry."""
    from integration.failed_work import WorkRefused, retry_study

    settings = load_settings()
    try:
        queued = retry_study(settings, study_uid, actor=operator(), source="cli")
    except WorkRefused as exc:
        raise fail(escape(str(exc)), 1) from None
    _said(study_uid, queued.job_id, queued.queue, queued.sent, "analysis queued again")


@studies_app.command("reanalyze")
def studies_reanalyze(
    study_uid: StudyArgument,
    model: Annotated[
        str | None, typer.Option(help="A configured model (PACSVLM_MODELS); default: the default.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="A prompt template; default: chosen by modality.")] = None,
    stat: Annotated[bool, typer.Option("--stat", help="Stat priority: the stat queue, taken first.")] = False,
) -> None:
    """Analyse a study again with a chosen model and prompt.

    A failed study gets its primary analysis again (its draft becomes the report of record; audited
    study.reanalyze); any other study gets a second opinion beside its report of record (opinion.requested).
    """
    from integration.failed_work import WorkRefused, reanalyze_study

    settings = load_settings()
    try:
        queued = reanalyze_study(
            settings, study_uid, model=model, prompt=prompt, stat=stat, actor=operator(), source="cli"
        )
    except WorkRefused as exc:
        raise fail(escape(str(exc)), 1) from None
    what = "primary analysis queued again" if queued.purpose == "primary" else "second opinion queued"
    _said(study_uid, queued.job_id, queued.queue, queued.sent, what)


def _said(study_uid: str, job_id: int, queue: str, sent: bool, what: str) -> None:
    later = "" if sent else " (the broker is away: the listener sends it when it is back)"
    Console().print(f"study {escape(study_uid)}: {what} as job {job_id} on {escape(queue)}{later}")


@studies_app.command("release")
def studies_release(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID of the held study.")],
) -> None:
    """Release a study held because its procedure step (MPPS) was discontinued: it is completed at once."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.mpps import release_study
    from integration.store.session import session_scope
    from integration.store.tables import utcnow

    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            released = release_study(session, study_uid, actor=operator(), now=utcnow())
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    if not released:
        raise fail(f"no held study {escape(study_uid)}: see 'pacs-vlm studies list'", 1)
    Console().print(f"study {escape(study_uid)} released: it is completed on the next assembly pass")
