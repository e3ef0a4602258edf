"""``pacs-vlm purge``: remove what the retention policies (``PACSVLM_RETENTION``) let go, or show it first."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from integration.cli import console, fail, load_settings


def purge_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; change nothing.")] = False,
) -> None:
    """Purge studies past their retention: instances first, reports and the study later (see PACSVLM_RETENTION)."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.purge import plan, purge
    from integration.store.tables import utcnow
    from integration.web.ops.purge_totals import counter_reader

    settings = load_settings()
    if not settings.retention:
        console.print("no retention policy (PACSVLM_RETENTION): everything is kept; nothing to purge")
        return
    now = utcnow()
    try:
        if dry_run:
            candidates = plan(settings, now)
            table = Table("study", "role", "goes", "instances", "bytes", title="would be purged (dry run)")
            for c in candidates:
                table.add_row(c.study_uid, c.role, c.scope.value, str(c.instances), str(c.size_bytes))
            console.print(table)
            total = sum(c.size_bytes for c in candidates)
            console.print(f"{len(candidates)} studies, {sum(c.instances for c in candidates)} instances, {total} bytes")
            return
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("purging", total=None)
            totals = purge(
                settings,
                now,
                actor="cli",
                progress=lambda done, of: progress.update(task, completed=done, total=of),
                measure=counter_reader(settings),
            )
    except SQLAlchemyError as exc:
        raise fail(
            f"the database is unreachable ({type(exc).__name__}): nothing more was purged; run it again"
        ) from None
    detail = totals.audit_detail()
    console.print(
        f"purged {detail['studies']} studies ({detail['whole_studies']} whole), {detail['instances']} instances, "
        f"{detail['bytes']} bytes, {detail['report_files']} report files; "
        f"{detail['resumed']} unfinished purges resumed, {detail['called_off']} called off (new instances)"
    )
