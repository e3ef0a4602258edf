"""The prior's report: the text a radiologist reads beside the prior images, and where it came from.

Sources, best first: our own signed report of that study (a radiologist's words, in our store); an SR
document in the prior study (retrieved with it; its TEXT items of findings and impressions); an
Encapsulated PDF in the prior (recorded as existing -- nothing reads it, no OCR); a FHIR DiagnosticReport
for the study from the configured FHIR server (its conclusion, else its plain-text presented form).  A PDF
gives no text, so when one exists the FHIR server is still asked, and ``"pdf"`` is recorded only when that
gives nothing.

All of this text comes from outside (other systems, other people) and goes into a prompt: it is
cleaned with :func:`integration.findings.clean_text` and capped, and it is never logged.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

from integration.findings import clean_text
from integration.priors.matching import DOSE_SR_CLASSES, KEY_OBJECT_SELECTION

log = logging.getLogger(__name__)

#: Most characters of a prior's report kept (a long report is cut with an ellipsis).
REPORT_LIMIT = 4000
#: Concept names of the SR sections whose TEXT items are the report (DCM codes and their meanings).
REPORT_CODES = frozenset({"121070", "121071", "121072", "121073", "121076", "121077"})
REPORT_MEANINGS = frozenset({"findings", "finding", "impressions", "impression", "conclusions", "conclusion"})
#: SR classes whose text is no report: dose reports and key-object selections.
NOT_REPORTS = DOSE_SR_CLASSES | {KEY_OBJECT_SELECTION}
#: The FHIR ``identifier`` system of DICOM UIDs (as :mod:`integration.reports.fhir` writes them).
DICOM_UID_SYSTEM = "urn:dicom:uid"
FHIR_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PriorReport:
    """A prior's report text and its source.

    Attributes
    ----------
    text : str or None
        Cleaned, capped text; None when no source had text.
    source : str or None
        ``"signed"``, ``"sr"``, ``"pdf"`` (a PDF exists, no text), ``"fhir"``, or None (nothing found).
    """

    text: str | None
    source: str | None


def sr_text(path: Path) -> str | None:
    """Return the report text of an SR document: its findings and impressions TEXT items, by section.

    Every TEXT item under a container (or with a concept) named findings, impressions or conclusions is
    taken, headed by its section's name; an SR without such sections gives all its TEXT items.  None when the
    file is no SR or holds no text.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many kinds for damaged files
        log.warning("prior SR unreadable (%s)", type(exc).__name__)
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    if "ContentSequence" not in ds or sop_class in NOT_REPORTS:
        return None
    report: list[tuple[str, str]] = []
    everything: list[tuple[str, str]] = []
    for section, text, relevant in _text_items(ds.ContentSequence, "", False):
        everything.append((section, text))
        if relevant:
            report.append((section, text))
    return _joined(report or everything)


def _text_items(items: Sequence[Any], section: str, relevant: bool) -> Iterator[tuple[str, str, bool]]:
    """Walk a content tree depth first: (section name, text, under a findings/impressions concept)."""
    for item in items:
        code, meaning = _concept(item)
        here = relevant or code in REPORT_CODES or meaning.lower() in REPORT_MEANINGS
        kind = str(item.get("ValueType", "")).upper()
        if kind == "TEXT" and str(item.get("TextValue", "")).strip():
            yield section or meaning, str(item.TextValue), here
        if "ContentSequence" in item:
            yield from _text_items(item.ContentSequence, meaning if kind == "CONTAINER" else section, here)


def _concept(item: Any) -> tuple[str, str]:
    names = item.get("ConceptNameCodeSequence") or []
    if not names:
        return "", ""
    return str(names[0].get("CodeValue", "")).strip(), str(names[0].get("CodeMeaning", "")).strip()


def _joined(parts: Sequence[tuple[str, str]]) -> str | None:
    lines: list[str] = []
    last = None
    for section, text in parts:
        if section and section != last:
            lines.append(f"{clean_text(section, 64, one_line=True)}:")
            last = section
        lines.append(clean_text(text))
    cleaned = clean_text("\n".join(line for line in lines if line), REPORT_LIMIT)
    return cleaned or None


def fhir_report_text(
    base_url: str, token: str | None, study_uid: str, timeout: float = FHIR_TIMEOUT_SECONDS
) -> str | None:
    """Ask a FHIR server for the DiagnosticReport of a study; return its conclusion or plain-text form.

    Two searches are tried in turn: by the study as a logical reference (``study:identifier``, FHIR R5's
    ``DiagnosticReport.study``; R4 servers answer it for ``imagingStudy``) and by the report's own
    identifier carrying the UID.  A report counts only when it names the study itself (in ``imagingStudy``,
    ``study`` or ``identifier``): a server that ignores an unknown search parameter and answers with every
    report must not give us another patient's.  Errors (unreachable, refused, not JSON) give None.
    """
    value = f"{DICOM_UID_SYSTEM}|urn:oid:{study_uid}"
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{base_url.rstrip('/')}/DiagnosticReport"
    try:
        with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
            for params in ({"study:identifier": value}, {"identifier": value}):
                response = client.get(url, params=params)
                if response.status_code != 200:
                    continue
                text = _bundle_text(response.json(), study_uid)
                if text:
                    return text
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("FHIR report search failed (%s)", type(exc).__name__)
    return None


def _bundle_text(bundle: Any, study_uid: str) -> str | None:
    if not isinstance(bundle, dict):
        return None
    reports = [entry.get("resource") for entry in bundle.get("entry") or [] if isinstance(entry, dict)]
    if bundle.get("resourceType") == "DiagnosticReport":
        reports = [bundle]
    for report in reports:
        if isinstance(report, dict) and report.get("resourceType") == "DiagnosticReport" and _names(report, study_uid):
            text = _report_text(report)
            if text:
                return text
    return None


def _names(report: dict[str, Any], study_uid: str) -> bool:
    """Whether a DiagnosticReport refers to the study (by identifier value ``urn:oid:<uid>`` or the bare UID)."""
    wanted = {study_uid, f"urn:oid:{study_uid}"}
    identifiers = [ref.get("identifier") for key in ("imagingStudy", "study") for ref in report.get(key) or []]
    identifiers += report.get("identifier") or []
    return any(isinstance(i, dict) and str(i.get("value", "")) in wanted for i in identifiers)


def _report_text(report: dict[str, Any]) -> str | None:
    if str(report.get("status", "")) in {"entered-in-error", "cancelled", "registered"}:
        return None
    texts: list[str] = []
    for form in report.get("presentedForm") or []:
        if isinstance(form, dict) and str(form.get("contentType", "")).startswith("text/plain") and form.get("data"):
            try:
                texts.append(base64.b64decode(form["data"], validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                continue
    if not texts and report.get("conclusion"):
        texts.append(str(report["conclusion"]))
    cleaned = clean_text("\n".join(texts), REPORT_LIMIT)
    return cleaned or None


def prior_report(
    *,
    signed: str | None,
    sr_files: Sequence[Path],
    pdf: bool,
    study_uid: str,
    fhir_url: str | None = None,
    fhir_token: str | None = None,
    fhir_timeout: float = FHIR_TIMEOUT_SECONDS,
) -> PriorReport:
    """Find a prior's report text, best source first.

    Parameters
    ----------
    signed : str or None
        Our signed report's text for the prior (:func:`integration.store.priors.signed_report_text`).
    sr_files : sequence of Path
        The prior's SR documents on disk (retrieved with it).
    pdf : bool
        Whether the prior holds an Encapsulated PDF report.
    study_uid : str
        The prior's Study Instance UID (for the FHIR search).
    fhir_url, fhir_token : str, optional
        The FHIR server's base URL and bearer token.
    fhir_timeout : float
        Seconds the FHIR server may take.

    Returns
    -------
    PriorReport
        The text and its source: signed, sr, fhir, then pdf (no text), else nothing.
    """
    ours = clean_text(signed or "", REPORT_LIMIT)
    if ours:
        return PriorReport(ours, "signed")
    for path in sr_files:
        text = sr_text(path)
        if text:
            return PriorReport(text, "sr")
    fhir = fhir_report_text(fhir_url, fhir_token, study_uid, fhir_timeout) if fhir_url else None
    if fhir:
        return PriorReport(fhir, "fhir")
    return PriorReport(None, "pdf") if pdf else PriorReport(None, None)
