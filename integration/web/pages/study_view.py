"""What the study page shows besides the viewer's stacks: the frames the model saw, the report chosen, its versions.

A :class:`Tile` is one frame as an ``<img>`` pointing at the frame route of :mod:`integration.web.api.images`
(the thumbnails of the model's images and of the priors); each one knows which prompt images (``Image 1``,
``Image 2`` ...) of the report's evidence it is, so the page can mark them and a finding's citations can show
them.  The series themselves are scrolled slice by slice (:mod:`integration.web.pages.study_stack`).

The request a radiologist reads first (the clinical question and, for photo uploads, the side the uploader
stated) is read from the study's first stored instance (:func:`study_request`), or, for a telemedicine case, the
question from the case row, where it is kept whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydicom
from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.config import Settings
from integration.imaging.referral import read_question
from integration.imaging.windows import WINDOW_PRESETS
from integration.store.reading_tables import UploadCase
from integration.store.tables import (
    Delivery,
    Instance,
    Report,
    ReportPurpose,
    ReportRevision,
    ReportStatus,
    Series,
    Study,
)
from integration.uids import is_valid_uid
from integration.web.api.images import window_for

#: Most thumbnails per series of a prior (sampled evenly; the frames the model saw are always shown).
THUMBNAILS_PER_SERIES = 48
#: Pixel sizes of a thumbnail and of a prior's large view.
THUMBNAIL_SIZE = 128
VIEWER_SIZE = 768
#: Longest side of the current study's large view before the viewer script sizes it (and without script).
MAIN_VIEW_SIZE = 1024


@dataclass(frozen=True)
class Tile:
    """One frame shown as a thumbnail.

    Attributes
    ----------
    study_uid, series_uid, sop_instance_uid : str
        Where the frame is.
    frame : int
        1-based frame number.
    window : str
        The window asked for (``default`` or a CT preset).
    label : str
        What it is, without patient data (``CT series 2, instance 14``).
    images : tuple of int
        The prompt image numbers of the report's evidence this frame was (empty when the model did not see it).
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame: int
    window: str
    label: str
    images: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, int, str]:
        """Identity of the picture: instance, frame, window."""
        return (self.sop_instance_uid, self.frame, self.window)

    def src(self, size: int) -> str:
        """The frame route's URL of the frame rendered with its longest side ``size`` pixels."""
        query = urlencode({"size": size, "window": self.window})
        return f"/studies/{self.study_uid}/instances/{self.sop_instance_uid}/frames/{self.frame}.png?{query}"

    def page_url(self, report_id: int | None) -> str:
        """The study page's URL showing ``report_id`` with this frame in the large view (no JavaScript needed)."""
        params: dict[str, Any] = {"image": self.sop_instance_uid, "frame": self.frame, "window": self.window}
        if report_id is not None:
            params = {"report": report_id, **params}
        return f"/studies/{self.study_uid}?{urlencode(params)}#viewer"


def window_presets() -> list[dict[str, Any]]:
    """The viewer's window buttons: ``default`` then each CT preset, with its centre and width."""
    presets: list[dict[str, Any]] = [{"name": "default", "label": "Default", "center": None, "width": None}]
    for name, window in WINDOW_PRESETS.items():
        label = name.replace("_", " ").capitalize()
        presets.append({"name": name, "label": label, "center": round(window.center), "width": round(window.width)})
    return presets


def viewer_links(
    settings: Settings, study_uid: str, accession_number: str | None, patient_id: str | None
) -> list[tuple[str, str]]:
    """The configured viewers' links for one study, ``(name, url)``; a template lacking a value gives none."""
    links = []
    for viewer in settings.viewers:
        url = viewer.for_study(study_uid, accession_number, patient_id)
        if url is not None:
            links.append((viewer.name, url))
    return links


def evidence_entries(evidence: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, str, int, str]]:
    """Return the usable entries of a report's evidence, in order.

    Parameters
    ----------
    evidence : sequence of mapping
        ``{"image", "series_uid", "sop_instance_uid", "frame", "window"}`` entries.

    Returns
    -------
    list of tuple
        ``(image number, series UID, SOP Instance UID, frame, window)``; entries with an invalid UID or
        number are left out.
    """
    entries = []
    for entry in evidence:
        if not isinstance(entry, Mapping):
            continue
        number, frame = entry.get("image"), entry.get("frame") or 1
        sop, series = entry.get("sop_instance_uid"), entry.get("series_uid")
        if not (isinstance(number, int) and isinstance(frame, int) and number >= 1 and frame >= 1):
            continue
        if not (is_valid_uid(sop) and is_valid_uid(series)):
            continue
        entries.append((number, str(series), str(sop), frame, window_for(entry.get("window"))))
    return entries


def choose_report(reports: Sequence[Report], report_id: int | None) -> Report | None:
    """Return the report to show: the one asked for, else the report of record, else the newest draft or report.

    Parameters
    ----------
    reports : sequence of Report
        The study's reports, newest first.
    report_id : int or None
        The report asked for.

    Returns
    -------
    Report or None
        None when the study has no report.

    Raises
    ------
    fastapi.HTTPException
        404 when ``report_id`` is not a report of this study.
    """
    if report_id is not None:
        for report in reports:
            if report.id == report_id:
                return report
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report for this study")
    # the report of record first: a primary draft, else the signed report; second opinions after them
    for wanted in (ReportStatus.DRAFT, ReportStatus.SIGNED):
        for report in reports:
            if report.status is wanted and report.purpose is ReportPurpose.PRIMARY:
                return report
    drafts = [report for report in reports if report.status is ReportStatus.DRAFT]
    return drafts[0] if drafts else (reports[0] if reports else None)


def revisions_of(session: Session, report_id: int) -> list[dict[str, Any]]:
    """Return a report's radiologist versions with their SR and delivery states, oldest first.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    report_id : int
        The report.

    Returns
    -------
    list of dict
        ``id``, ``version``, ``status``, ``author``, ``organization``, ``created_at``, ``findings``
        (the signed content), ``text``, ``sr_sop_instance_uid``, ``sr_written`` and ``deliveries``
        (``destination``, ``document``, ``state``, ``attempts``).
    """
    revisions = session.scalars(
        select(ReportRevision).where(ReportRevision.report_id == report_id).order_by(ReportRevision.version)
    ).all()
    deliveries: dict[int, list[dict[str, Any]]] = {}
    for delivery in session.scalars(
        select(Delivery).where(Delivery.report_id == report_id).order_by(Delivery.destination, Delivery.document)
    ):
        if delivery.revision_id is not None:
            deliveries.setdefault(delivery.revision_id, []).append(
                {
                    "destination": delivery.destination,
                    "document": delivery.document,
                    "state": delivery.state.value,
                    "attempts": delivery.attempts,
                }
            )
    return [
        {
            "id": revision.id,
            "version": revision.version,
            "status": revision.status.value,
            "author": revision.author,
            "organization": revision.organization,
            "created_at": revision.created_at,
            "findings": revision.findings if isinstance(revision.findings, dict) else {},
            "text": revision.text,
            "sr_sop_instance_uid": revision.sr_sop_instance_uid,
            "sr_written": revision.sr_path is not None,
            "deliveries": deliveries.get(revision.id, []),
        }
        for revision in revisions
    ]


#: How the page names a stated side (DICOM Laterality).
SIDES = {"R": "right", "L": "left"}


def study_request(settings: Settings, session: Session, study: Study) -> dict[str, str | None]:
    """Return what was asked of the study: the clinical question and, for a photo upload, the stated side.

    Parameters
    ----------
    settings : Settings
        The instance store.
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The study (already authorized).

    Returns
    -------
    dict
        ``question`` (cleaned, untrusted text: escaped where shown) and ``laterality`` (``right``, ``left``,
        ``not stated``; None for studies that are not photo uploads); None where nothing is recorded or the
        file cannot be read.
    """
    storage_path = session.scalar(
        select(Instance.storage_path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .order_by(Instance.id)
        .limit(1)
    )
    answer: dict[str, str | None] = {"question": None, "laterality": None}
    case_question = session.scalar(select(UploadCase.clinical_question).where(UploadCase.study_id == study.id))
    if storage_path is None:
        answer["question"] = case_question
        return answer
    root = settings.instance_root.resolve()
    path = (root / storage_path).resolve()
    if not path.is_relative_to(root):
        return answer
    answer["question"] = case_question or read_question(path)  # a telemedicine case keeps it whole
    if study.source == "upload":
        answer["laterality"] = _stated_side(path)
    return answer


def _stated_side(path: Path) -> str:
    """The side a photo's uploader stated (Laterality, else Image Laterality), or ``not stated``."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Laterality", "ImageLaterality"])
    except Exception:  # an unreadable header states no side
        return "not stated"
    value = str(ds.get("Laterality") or ds.get("ImageLaterality") or "").strip().upper()
    return SIDES.get(value, "not stated")
