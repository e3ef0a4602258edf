"""A prior's report text: our signed report, the prior's SR, a PDF noted, a FHIR DiagnosticReport.

The FHIR server is a real HTTP server on a local socket (the standard library's ``http.server`` in a
thread), answering searches with Bundles as a FHIR server does.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from integration.priors.reports import fhir_report_text, prior_report, sr_text

PRIOR_UID = "1.2.826.0.1.3680043.8.498.1001"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def _code(value: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return Sequence([item])


def _item(kind: str, code: tuple[str, str], text: str | None = None, children: list[Dataset] | None = None) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = kind
    item.ConceptNameCodeSequence = _code(*code)
    if kind == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    if text is not None:
        item.TextValue = text
    if children:
        item.ContentSequence = Sequence(children)
    return item


def write_sr(path: Path, sop_class: str = BASIC_TEXT_SR) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = PRIOR_UID, generate_uid(), "SR"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _code("18748-4", "Diagnostic imaging report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence(
        [
            _item("TEXT", ("121060", "History"), "Cough for three weeks."),
            _item(
                "CONTAINER",
                ("121070", "Findings"),
                children=[_item("TEXT", ("121071", "Finding"), "8 mm nodule in the right upper lobe.\x07")],
            ),
            _item(
                "CONTAINER",
                ("121072", "Impressions"),
                children=[_item("TEXT", ("121073", "Impression"), "Small pulmonary nodule; follow-up advised.")],
            ),
        ]
    )
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sr_text_reads_findings_and_impressions_cleaned(tmp_path: Path) -> None:
    text = sr_text(write_sr(tmp_path / "sr.dcm"))
    assert text == (
        "Findings:\n8 mm nodule in the right upper lobe.\nImpressions:\nSmall pulmonary nodule; follow-up advised."
    )  # the history is no report text; the control character is gone
    assert sr_text(write_sr(tmp_path / "dose.dcm", DOSE_SR)) is None  # a dose report is no report
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert sr_text(tmp_path / "junk.dcm") is None


def test_order_signed_then_sr_then_pdf(tmp_path: Path) -> None:
    sr = write_sr(tmp_path / "sr.dcm")
    signed = prior_report(signed=" Signed: nodule stable.\x00 ", sr_files=[sr], pdf=True, study_uid=PRIOR_UID)
    assert (signed.text, signed.source) == ("Signed: nodule stable.", "signed")
    from_sr = prior_report(signed=None, sr_files=[sr], pdf=True, study_uid=PRIOR_UID)
    assert from_sr.source == "sr" and from_sr.text is not None and "nodule" in from_sr.text
    pdf = prior_report(signed=None, sr_files=[], pdf=True, study_uid=PRIOR_UID)
    assert (pdf.text, pdf.source) == (None, "pdf")
    nothing = prior_report(signed="", sr_files=[], pdf=False, study_uid=PRIOR_UID)
    assert (nothing.text, nothing.source) == (None, None)


def _report(study_uid: str, text: str, conclusion: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "imagingStudy": [
            {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}
        ],
        "conclusion": conclusion,
        "presentedForm": [
            {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(text.encode()).decode()}
        ],
    }


class _Fhir(BaseHTTPRequestHandler):
    """Answers DiagnosticReport searches; ignores the search parameter when ``lenient`` (as some servers do)."""

    reports: list[dict[str, Any]] = []
    lenient = False
    seen: list[tuple[str, dict[str, list[str]], str | None]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.seen.append((parts.path, query, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer secret-token":
            self._answer(401, {"resourceType": "OperationOutcome"})
            return
        if "study:identifier" in query and not self.lenient:
            self._answer(400, {"resourceType": "OperationOutcome"})  # an R4 server: unknown parameter
            return
        wanted = (query.get("identifier") or query.get("study:identifier") or [""])[0].rsplit(":", 1)[-1]
        hits = self.reports if self.lenient else [r for r in self.reports if wanted in json.dumps(r)]
        self._answer(200, {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in hits]})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def fhir() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fhir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Fhir.reports, _Fhir.lenient, _Fhir.seen = [], False, []
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def test_fhir_diagnostic_report_of_the_study(fhir: str) -> None:
    _Fhir.reports = [_report("1.2.3.999", "Another patient's report."), _report(PRIOR_UID, "Prior CT: nodule 8 mm.")]
    report = prior_report(
        signed=None, sr_files=[], pdf=True, study_uid=PRIOR_UID, fhir_url=fhir, fhir_token="secret-token"
    )
    assert (report.text, report.source) == ("Prior CT: nodule 8 mm.", "fhir")  # text beats a PDF without any
    path, query, auth = _Fhir.seen[-1]
    assert path == "/fhir/DiagnosticReport"
    assert query == {"identifier": [f"urn:dicom:uid|urn:oid:{PRIOR_UID}"]}
    assert auth == "Bearer secret-token"
    assert fhir_report_text(fhir, "wrong", PRIOR_UID) is None  # refused: nothing, no exception


def test_fhir_server_ignoring_the_search_never_gives_another_study(fhir: str) -> None:
    _Fhir.lenient = True
    _Fhir.reports = [_report("1.2.3.999", "Another patient's report.")]
    assert fhir_report_text(fhir, "secret-token", PRIOR_UID) is None
    _Fhir.reports.append(_report(PRIOR_UID, "", conclusion="No acute findings."))
    assert fhir_report_text(fhir, "secret-token", PRIOR_UID) == "No acute findings."


def test_fhir_server_down_gives_nothing() -> None:
    assert fhir_report_text("http://127.0.0.1:9", None, PRIOR_UID, timeout=1.0) is None
