"""The draft's SR on disk (once, fixed UIDs), signing (v2, v3 ... with verified SRs) and ``pacs-vlm report``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from integration.config import Settings
from integration.findings import InvalidFindings
from integration.reports.drafts import ensure_draft_sr, sign_report
from integration.reports.sr import read_sr
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.migrate import upgrade
from integration.store.revisions import ReportNotSignable, UnknownReport
from integration.store.session import session_scope
from integration.store.tables import (
    AnalysisJob,
    AuditEvent,
    Instance,
    Report,
    ReportRevision,
    ReportStatus,
    Series,
    Study,
    StudyState,
    utcnow,
)
from models.draft import AI_DRAFT_NOTICE
from tests.support.peers import REPO
from tests.support.sr_tools import check_with_tools
from worker.cli import app

DRAFT_FINDINGS = {
    "findings": [
        {"text": "Nodule in the right upper lobe.", "images": [1, 2]},
        {"text": "No effusion.", "images": [2]},
    ],
    "impression": "Nodule; follow-up advised.",
    "limitations": "No prior studies.",
    "structured": True,
    "problems": [],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("migrated_postgres_url")
    return Settings(data_dir=data_dir, database_url=url)


def store_study(settings: Settings, files: list[Path], state: StudyState = StudyState.DRAFTED) -> tuple[int, list[Any]]:
    """Copy files into the instance store and add the study, series and instance rows."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    now = utcnow()
    with session_scope(settings.database_url) as session:
        study = Study(
            study_uid=str(headers[0].StudyInstanceUID),
            state=state,
            calling_ae="CT1",
            first_received_at=now,
            last_received_at=now,
            stable_after=now,
        )
        session.add(study)
        session.flush()
        series_ids: dict[str, int] = {}
        for path, header in zip(files, headers, strict=True):
            series_uid = str(header.SeriesInstanceUID)
            if series_uid not in series_ids:
                series = Series(series_uid=series_uid, study_id=study.id, modality=str(header.Modality))
                session.add(series)
                session.flush()
                series_ids[series_uid] = series.id
            relative = f"{study.study_uid}/{series_uid}/{header.SOPInstanceUID}.dcm"
            (settings.instance_root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, settings.instance_root / relative)
            session.add(
                Instance(
                    sop_instance_uid=str(header.SOPInstanceUID),
                    sop_class_uid=str(header.SOPClassUID),
                    series_id=series_ids[series_uid],
                    study_version=1,
                    storage_path=relative,
                    size_bytes=path.stat().st_size,
                    transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
                    calling_ae="CT1",
                    received_at=now,
                )
            )
        return study.id, headers


def add_report(
    settings: Settings, study_id: int, evidence: list[dict[str, Any]], status: ReportStatus = ReportStatus.DRAFT
) -> int:
    with session_scope(settings.database_url) as session:
        report = Report(
            study_id=study_id,
            study_version=1,
            status=status,
            model_id="smoke/llava",
            model_revision="abc123",
            model_family="llava",
            prompt_version="ct-chest/v1",
            structured=True,
            findings=DRAFT_FINDINGS,
            text=f"{AI_DRAFT_NOTICE}\n\nFINDINGS: ...",
            raw_output="{}",
            evidence=evidence,
            timings={},
            tokens_in=1,
            tokens_out=1,
            created_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        )
        session.add(report)
        session.flush()
        return report.id


def evidence_of(headers: list[Any], frames: dict[int, list[int]] | None = None) -> list[dict[str, Any]]:
    """One image per header (frame 1), or image -> frames of the first header (multi-frame)."""
    if frames is None:
        pairs = [(n, h, 1) for n, h in enumerate(headers, start=1)]
    else:
        pairs = [(image, headers[0], frame) for image, numbers in frames.items() for frame in numbers]
    return [
        {
            "image": image,
            "sop_class_uid": str(h.SOPClassUID),
            "sop_instance_uid": str(h.SOPInstanceUID),
            "series_uid": str(h.SeriesInstanceUID),
            "frame": frame,
            "window": "lung",
        }
        for image, h, frame in pairs
    ]


@pytest.fixture
def ct_report(settings: Settings, tmp_path: Path) -> tuple[int, list[Any]]:
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 3, rows=16, columns=16))
    return add_report(settings, study_id, evidence_of(headers)), headers


def test_the_draft_sr_is_written_once_with_fixed_uids(settings: Settings, ct_report: tuple[int, list[Any]]) -> None:
    report_id, headers = ct_report
    path = ensure_draft_sr(settings, report_id)
    assert ensure_draft_sr(settings, report_id) == path
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        stored = (report.sr_sop_instance_uid, report.sr_series_uid, report.sr_path)
    document = pydicom.dcmread(path)
    assert stored == (
        document.SOPInstanceUID,
        document.SeriesInstanceUID,
        f"reports/{headers[0].StudyInstanceUID}/{document.SOPInstanceUID}.dcm",
    )
    assert path == settings.data_dir / str(stored[2])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    check_with_tools(path)
    reading = read_sr(document)
    assert (reading.completion_flag, reading.verification_flag) == ("PARTIAL", "UNVERIFIED")
    assert [f.text for f in reading.findings] == [f["text"] for f in DRAFT_FINDINGS["findings"]]
    assert [r.sop_instance_uid for r in reading.findings[0].references] == [str(h.SOPInstanceUID) for h in headers[:2]]
    assert reading.evidence == tuple(str(h.SOPInstanceUID) for h in headers)
    path.unlink()  # lost: built again, with the same UIDs
    assert ensure_draft_sr(settings, report_id) == path
    assert pydicom.dcmread(path).SOPInstanceUID == document.SOPInstanceUID


def test_signing_twice_makes_versions_2_and_3_each_referencing_the_last(
    settings: Settings, ct_report: tuple[int, list[Any]]
) -> None:
    report_id, headers = ct_report
    edited = [{"text": "Spiculated nodule, right upper lobe, 14 mm.", "images": [1]}]
    first = sign_report(
        settings, report_id, author="Doe^Jane", organization="St Elsewhere", findings=edited, impression="Suspicious."
    )
    second = sign_report(settings, report_id, author="Roe^Richard", organization="St Elsewhere")
    draft_uid = pydicom.dcmread(ensure_draft_sr(settings, report_id)).SOPInstanceUID
    with session_scope(settings.database_url) as session:
        revisions = session.scalars(select(ReportRevision).order_by(ReportRevision.version)).all()
        report = session.get(Report, report_id)
        study = session.get(Study, report.study_id) if report else None
        audit = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "report.sign")).all()
    assert [(r.id, r.version, r.status.value, r.author) for r in revisions] == [
        (first, 2, "signed", "Doe^Jane"),
        (second, 3, "signed", "Roe^Richard"),
    ]
    assert report is not None and report.status == ReportStatus.SIGNED and report.verification == "UNVERIFIED"
    assert study is not None and study.state == StudyState.SIGNED
    assert audit == ["Doe^Jane", "Roe^Richard"]
    v2, v3 = revisions
    assert v2.findings["findings"] == edited and v2.findings["impression"] == "Suspicious."
    assert v2.findings["limitations"] == DRAFT_FINDINGS["limitations"]  # not edited: the draft's
    assert v3.findings == v2.findings  # nothing edited: the previous version's
    for revision in revisions:
        assert AI_DRAFT_NOTICE not in revision.text and "AI-assisted" in revision.text
        assert revision.sr_path == f"reports/{headers[0].StudyInstanceUID}/{revision.sr_sop_instance_uid}.dcm"
    readings = []
    for revision in revisions:
        path = settings.data_dir / str(revision.sr_path)
        check_with_tools(path)
        readings.append(read_sr(pydicom.dcmread(path)))
    r2, r3 = readings
    assert r2.predecessors == (draft_uid,) and r3.predecessors == (r2.sop_instance_uid,)
    assert r2.series_instance_uid == r3.series_instance_uid == v2.sr_series_uid
    assert (r2.instance_number, r3.instance_number) == (2, 3)
    for reading, author in ((r2, "Doe^Jane"), (r3, "Roe^Richard")):
        assert (reading.completion_flag, reading.verification_flag) == ("COMPLETE", "VERIFIED")
        assert [(o.name, o.organization) for o in reading.verifying_observers] == [(author, "St Elsewhere")]
        assert [f.text for f in reading.findings] == [edited[0]["text"]]
        assert [r.sop_instance_uid for r in reading.findings[0].references] == [str(headers[0].SOPInstanceUID)]
        assert reading.impression == "Suspicious." and reading.study_instance_uid == headers[0].StudyInstanceUID
        assert reading.algorithm_name == "smoke/llava" and reading.algorithm_version == "abc123"


def test_a_multiframe_study_is_referenced_by_frame(settings: Settings, tmp_path: Path) -> None:
    study_id, headers = store_study(settings, [pydicom_test_file("examples_ybr_color.dcm")])
    report_id = add_report(settings, study_id, evidence_of(headers, {1: [1, 15], 2: [30]}))
    sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere", signed_at=utcnow())
    with session_scope(settings.database_url) as session:
        [revision] = session.scalars(select(ReportRevision)).all()
    for path in (ensure_draft_sr(settings, report_id), settings.data_dir / str(revision.sr_path)):
        check_with_tools(path)
        reading = read_sr(pydicom.dcmread(path))
        assert [r.frames for r in reading.findings[0].references] == [(1, 15, 30)]
        assert [r.frames for r in reading.findings[1].references] == [(30,)]


def test_what_cannot_be_signed_is_refused_and_nothing_is_written(
    settings: Settings, ct_report: tuple[int, list[Any]]
) -> None:
    report_id, _ = ct_report
    with pytest.raises(UnknownReport):
        sign_report(settings, 999_999, author="Doe^Jane", organization="St Elsewhere")
    with pytest.raises(InvalidFindings, match="image"):
        sign_report(settings, report_id, author="Doe^Jane", organization="X", findings=[{"text": "x", "images": [9]}])
    with pytest.raises(InvalidFindings):
        sign_report(settings, report_id, author="Doe^Jane", organization="X", findings=[{"images": [1]}])
    with pytest.raises(ValueError, match="person name"):
        sign_report(settings, report_id, author="Doe\\Jane", organization="St Elsewhere")
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.status = ReportStatus.SUPERSEDED
    with pytest.raises(ReportNotSignable, match="superseded"):
        sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere")
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(ReportRevision)).all() == []
    assert not list((settings.data_dir / "reports").rglob("*.dcm"))  # nothing signed, no draft SR needed


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    env.update(PACSVLM_DATA_DIR=str(settings.data_dir), PACSVLM_DATABASE_URL=settings.database_url, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "report", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, int]:
    """An embedded-default (SQLite) data folder with one CT study and its draft, for the command line."""
    folder = tmp_path_factory.mktemp("cli")
    settings = Settings(data_dir=folder / "var", database_url="", storage_dir=None)
    upgrade(settings.database_url)
    study_id, headers = store_study(settings, write_ct_series(folder / "ct", 2, rows=8, columns=8))
    return settings, add_report(settings, study_id, evidence_of(headers))


def test_report_sign_sr_and_show_on_the_command_line(cli_report: tuple[Settings, int], tmp_path: Path) -> None:
    sqlite_settings, report_id = cli_report
    edits = tmp_path / "edited.json"
    edited = {"findings": [{"text": "Edited [b]finding[/b]", "images": [2]}], "impression": "OK", "comparison": "None."}
    edits.write_text(json.dumps(edited))
    sr = run_cli(sqlite_settings, "sr", str(report_id))
    assert sr.returncode == 0, sr.stderr
    assert Path(sr.stdout.strip()) == ensure_draft_sr(sqlite_settings, report_id)
    signed = run_cli(
        sqlite_settings, "sign", str(report_id), "--author", "Doe^Jane", "--organization", "St Elsewhere",
        "--findings-file", str(edits),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert "version 2 signed" in signed.stderr
    reading = read_sr(pydicom.dcmread(signed.stdout.strip()))
    assert [f.text for f in reading.findings] == ["Edited [b]finding[/b]"] and reading.impression == "OK"
    assert reading.verification_flag == "VERIFIED"
    shown = run_cli(sqlite_settings, "show", str(report_id))
    assert shown.returncode == 0, shown.stderr
    assert "Edited [b]finding[/b]" in shown.stdout and "Nodule in the right upper lobe." in shown.stdout
    assert "v2 signed by Doe^Jane, St Elsewhere" in shown.stdout and "Comparison: None." in shown.stdout


SIGN = ["sign", "{id}", "--author", "Doe^Jane", "--organization", "X"]
ERRORS = [
    (["sr", "4242"], None, "no report with id 4242"),
    (["show", "4242"], None, "no report with id 4242"),
    (["sign", "4242", "--author", "Doe^Jane", "--organization", "X"], None, "no report with id 4242"),
    ([*SIGN, "--findings-file", "{edits}"], "[{", "not valid JSON"),
    ([*SIGN, "--findings-file", "{edits}"], "{}", "list"),
    ([*SIGN, "--findings-file", "{edits}"], "[1]", "text"),
    ([*SIGN, "--findings-file", "{edits}"], '[{"text": "x", "images": [7]}]', "cites image(s) [7]"),
    ([*SIGN, "--findings-file", "{edits}"], '{"findings": [], "impression": 3}', "must be strings"),
    ([*SIGN, "--findings-file", "{missing}"], None, "cannot read"),
    (["sign", "{id}", "--author", "Doe\\Jane", "--organization", "X"], None, "person name"),
    (["sign", "{id}", "--author", "Doe^Jane", "--organization", "x" * 65], None, "organization"),
    (["sign", "notanumber", "--author", "Doe^Jane", "--organization", "X"], None, "valid integer"),
]


def error_case(cli_report: tuple[Settings, int], tmp_path: Path, args: list[str], edits: str | None) -> list[str]:
    path = tmp_path / "edits.json"
    if edits is not None:
        path.write_text(edits)
    return [a.format(id=cli_report[1], edits=path, missing=tmp_path / "missing.json") for a in args]


@pytest.mark.parametrize(("args", "edits", "message"), [ERRORS[2], ERRORS[3]])
def test_command_line_errors_exit_2_without_a_traceback(
    cli_report: tuple[Settings, int], tmp_path: Path, args: list[str], edits: str | None, message: str
) -> None:
    result = run_cli(cli_report[0], *error_case(cli_report, tmp_path, args, edits))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("args", "edits", "message"), ERRORS)
def test_every_command_line_error_is_one_line_and_exit_2(
    cli_report: tuple[Settings, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    edits: str | None,
    message: str,
) -> None:
    """The same checks in-process (a subprocess per case would cost a second each)."""
    settings = cli_report[0]
    monkeypatch.setenv("PACSVLM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PACSVLM_DATABASE_URL", settings.database_url)
    result = CliRunner().invoke(app, ["report", *error_case(cli_report, tmp_path, args, edits)], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert message in " ".join(result.stderr.split()), result.stderr


@pytest.mark.parametrize("command", [[], ["sign"], ["sr"], ["show"]])
def test_every_report_command_has_help(cli_report: tuple[Settings, int], command: list[str]) -> None:
    result = run_cli(cli_report[0], *command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_the_worker_gives_every_draft_its_sr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke_model_dir: Path
) -> None:
    """analyze_study, run in this process with the smoke-test model: the draft, then its SR."""
    from integration.config import install_settings
    from worker.tasks.analysis import analyze_study

    settings = Settings(data_dir=tmp_path / "var")
    upgrade(settings.database_url)
    files = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    study_id, headers = store_study(settings, files, state=StudyState.QUEUED)
    with session_scope(settings.database_url) as session:
        job = AnalysisJob(study_id=study_id, study_version=1, queue="analysis")
        session.add(job)
        session.flush()
        job_id = job.id
    environment = {"DATA_DIR": settings.data_dir, "MODEL": smoke_model_dir, "MODEL_DEVICE": "cpu"}
    environment |= {"MAX_NEW_TOKENS": 8, "MAX_IMAGES": 1, "IMAGE_SIZE": 64}
    for name, value in environment.items():
        monkeypatch.setenv(f"PACSVLM_{name}", str(value))
    install_settings(None)
    assert str(analyze_study.apply(args=[job_id]).get()).startswith("report ")
    with session_scope(settings.database_url) as session:
        [report] = session.scalars(select(Report)).all()
    assert report.sr_path is not None and report.sr_sop_instance_uid is not None
    path = settings.data_dir / report.sr_path
    check_with_tools(path)
    reading = read_sr(pydicom.dcmread(path))
    assert reading.sop_instance_uid == report.sr_sop_instance_uid
    assert (reading.algorithm_name, reading.algorithm_version) == (report.model_id, report.model_revision)
    assert reading.evidence == tuple(dict.fromkeys(e["sop_instance_uid"] for e in report.evidence))
    assert reading.study_instance_uid == headers[0].StudyInstanceUID
