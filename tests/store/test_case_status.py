"""A telemedicine case's status follows the report of the study's current version (PostgreSQL rows).

Photos added to a case after its draft or after its signature make a new version of the study; the uploader's
"My uploads" must then say ``received`` (nobody has looked at the new photos) rather than keep ``signed``.
"""

from __future__ import annotations

from integration.store.cases import DRAFTED, RECEIVED, SIGNED, case_status
from integration.store.session import session_scope
from integration.store.tables import Report, ReportPurpose, ReportStatus, Study, StudyState, utcnow
from tests.support.report_rows import report_row


def report(study: Study, status: ReportStatus, purpose: ReportPurpose = ReportPurpose.PRIMARY) -> Report:
    second = purpose is ReportPurpose.SECOND_OPINION
    return report_row(study, status, purpose=purpose, model_id="second" if second else "m")


def test_a_case_is_signed_only_while_its_signed_report_covers_every_photo(migrated_postgres_url: str) -> None:
    now = utcnow()
    with session_scope(migrated_postgres_url) as session:
        study = Study(
            study_uid="1.2.3.4", state=StudyState.DRAFTED, calling_ae="UPLOAD", version=1,
            first_received_at=now, last_received_at=now, stable_after=now,
        )  # fmt: skip
        session.add(study)
        session.flush()
        assert case_status(session, study.id) == RECEIVED
        session.add(report(study, ReportStatus.DRAFT, ReportPurpose.SECOND_OPINION))  # not the case's answer
        session.flush()
        assert case_status(session, study.id) == RECEIVED
        first = report(study, ReportStatus.DRAFT)
        session.add(first)
        session.flush()
        assert case_status(session, study.id) == DRAFTED
        first.status = ReportStatus.SIGNED
        session.flush()
        assert case_status(session, study.id) == SIGNED
        study.version = 2  # a photo added after the signature
        session.flush()
        assert case_status(session, study.id) == RECEIVED
        session.add(report(study, ReportStatus.DRAFT))
        session.flush()
        assert case_status(session, study.id) == DRAFTED
