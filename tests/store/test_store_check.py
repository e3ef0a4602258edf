"""``pacs-vlm store check``: files without rows and rows without files, reported and repaired per kind."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from integration.config import install_settings
from integration.purge import mark_eligible
from integration.retention_settings import RetentionPolicy
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Instance, Report, ReportStatus, StudyState
from integration.store_check import check_store
from tests.store.test_retention import NOW, _settings, add_study, count


def test_check_reports_and_repairs_each_kind(url: str, tmp_path: Path) -> None:
    settings = _settings(url, tmp_path, [RetentionPolicy(instance_days=30)])
    add_study(settings, "1.8.1", read_at=NOW - timedelta(days=5))  # read: a lost file's row goes
    add_study(settings, "1.8.2", state=StudyState.DRAFTED, report=ReportStatus.DRAFT)  # live: reported only
    add_study(settings, "1.8.3")  # a purge stopped half-way
    mark_eligible(settings, NOW)
    (settings.instance_root / "1.8.1/1.8.1.1/1.8.1.1.0.dcm").unlink()
    (settings.instance_root / "1.8.2/1.8.2.1/1.8.2.1.0.dcm").unlink()
    (settings.instance_root / "1.8.3/1.8.3.1/1.8.3.1.0.dcm").unlink()
    (settings.data_dir / "reports/1.8.1/1.8.1.9.dcm").unlink()
    old_orphan = settings.instance_root / "9.9/9.9.1/9.9.1.1.dcm"
    old_orphan.parent.mkdir(parents=True)
    old_orphan.write_bytes(b"x")
    os.utime(old_orphan, (time.time() - 7200, time.time() - 7200))
    new_orphan = settings.instance_root / "9.9/9.9.1/9.9.1.2.dcm"  # being written right now
    new_orphan.write_bytes(b"x")
    (settings.instance_root / ".incoming").mkdir()
    (settings.instance_root / ".incoming/abc.part").write_bytes(b"x")  # the intake's own: never looked at

    found = check_store(settings)
    assert found.counts() == {"orphan_file": 2, "missing_instance": 3, "missing_report_file": 1}
    assert count(settings, Instance) == 6  # a check alone changes nothing
    assert old_orphan.exists()
    assert any(p.study_uid == "1.8.2" and "live study" in p.action for p in found.problems)

    install_settings(settings)
    from worker.cli import app

    result = CliRunner().invoke(app, ["store", "check"])
    assert result.exit_code == 1 and "missing_instance" in result.output
    result = CliRunner().invoke(app, ["store", "check", "--repair"])
    assert result.exit_code == 0, result.output
    assert not old_orphan.exists() and new_orphan.exists()
    assert (settings.instance_root / ".incoming/abc.part").exists()
    with session_scope(settings.database_url) as session:
        paths = set(session.scalars(select(Instance.storage_path)))
        assert paths == {"1.8.1/1.8.1.1/1.8.1.1.1.dcm", "1.8.2/1.8.2.1/1.8.2.1.1.dcm", "1.8.2/1.8.2.1/1.8.2.1.0.dcm"}
        assert session.scalars(select(Report.sr_path).where(Report.sr_sop_instance_uid == "1.8.1.9")).one() is None
        assert session.scalars(select(AuditEvent.action).where(AuditEvent.action == "store.repair")).all()
    after = check_store(settings)
    assert after.counts() == {"orphan_file": 1, "missing_instance": 1}  # the young orphan and the live study's
