"""The draft SR's safety content: confidence per finding (NUM, meaning, band), decoding path, checks, critical matches.

Each document passes dciodvfy and dsrdump and is read back through highdicom; a signed version never carries
the model's scores or the draft's checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from integration.config import Settings
from integration.draft_checks import Check, CriticalMatch
from integration.findings import Document, Finding
from integration.reports.drafts import ensure_draft_sr, sign_report
from integration.reports.sr import SrReading, build_draft_sr, read_sr
from integration.reports.sr_content import SeenFrame
from integration.reports.sr_safety import CONFIDENCE, RATIO, DraftSafety, ReadConfidence, ReadSafety
from integration.samples import write_ct_series
from integration.store.migrate import upgrade
from integration.store.revisions import report_revisions
from integration.store.session import session_scope
from integration.store.tables import Report
from tests.reports.test_signing import DRAFT_FINDINGS, add_report, evidence_of, store_study
from tests.reports.test_sr import a_report, draft_and_signed
from tests.support.sr_tools import check_with_tools

METHOD = "exp(mean token log-probability) of the finding's text tokens"
FINDINGS = (
    Finding("Large left pneumothorax.", (1,), laterality="left", urgency="critical", confidence=0.912345),
    Finding("No pleural effusion.", (2,), confidence=0.5),
    Finding("Possible small nodule, right base.", (), confidence=0.1234),
    Finding("Degenerative changes of the spine.", (3,)),
)
SAFETY = DraftSafety(
    confidence_method=METHOD,
    decoding="grammar",
    checks=(
        Check(1, "laterality", "the text says left; Image Laterality of image 1 is R"),
        Check(0, "modality", "the draft speaks of MRI; the study is CT"),
    ),
    critical=(
        CriticalMatch(1, "pneumothorax", "Pneumothorax", "both", "Large left pneumothorax"),
        CriticalMatch(3, "model-urgent", "Urgent per the model", "urgency"),
    ),
)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, tuple[SeenFrame, ...]]:
    files = write_ct_series(tmp_path_factory.mktemp("ct"), 3, rows=16, columns=16)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seen = tuple(
        SeenFrame(n, str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID))
        for n, h in enumerate(headers, start=1)
    )
    return headers[0], seen


def meaning(low: float = 0.5, high: float = 0.8) -> str:
    return (
        f"Model's confidence in its own wording ({METHOD}); not a probability that the finding is right. "
        f"Bands: low below {low:g}, high at or above {high:g}, medium between."
    )


def test_a_draft_sr_carries_confidence_decoding_checks_and_critical_matches(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    source, seen = ct
    report = dataclasses.replace(a_report(seen, FINDINGS), safety=SAFETY)
    draft, signed, document, _ = draft_and_signed(source, report, tmp_path)  # dciodvfy and dsrdump on both
    assert draft.safety == ReadSafety(
        confidences=(
            ReadConfidence(0.9123, "high", meaning()),
            ReadConfidence(0.5, "medium", meaning()),
            ReadConfidence(0.1234, "low", meaning()),
            None,
        ),
        decoding="grammar",
        checks=(
            "Finding 1, laterality: the text says left; Image Laterality of image 1 is R",
            "Draft as a whole, modality: the draft speaks of MRI; the study is CT",
        ),
        critical=(
            'Finding 1: Pneumothorax (pneumothorax), from the urgency field and the text: "Large left pneumothorax"',
            "Finding 3: Urgent per the model (model-urgent), from the model's urgency field",
        ),
    )
    assert [f.text for f in draft.findings] == [f.text for f in FINDINGS]  # the findings read as before ...
    assert [len(f.references) for f in draft.findings] == [1, 1, 0, 1]  # ... with their images
    assert signed.safety == ReadSafety(confidences=(None, None, None, None))  # the radiologist's text: no scores
    assert [f.text for f in signed.findings] == [f.text for f in FINDINGS]
    # The NUM as written: under the finding (HAS PROPERTIES), the private concept, UCUM's ratio, a DS value.
    findings = next(item for item in document.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "59776-5")
    first = findings.ContentSequence[0]
    [score] = [item for item in first.ContentSequence if item.ValueType == "NUM"]
    assert score.RelationshipType == "HAS PROPERTIES"
    assert score.ConceptNameCodeSequence[0].CodeValue == CONFIDENCE.value
    assert score.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99PACSVLM"
    value = score.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(0.9123)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == RATIO.value == "{ratio}"
    assert value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert [item.RelationshipType for item in score.ContentSequence] == ["HAS CONCEPT MOD", "HAS PROPERTIES"]


def test_the_bands_follow_the_thresholds_passed_in(ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path) -> None:
    source, seen = ct
    safety = dataclasses.replace(SAFETY, low=0.2, high=0.95, checks=(), critical=(), decoding="")
    draft, _, _, _ = draft_and_signed(source, dataclasses.replace(a_report(seen, FINDINGS), safety=safety), tmp_path)
    assert [c.band if c else None for c in draft.safety.confidences] == ["medium", "medium", "low", None]
    assert draft.safety.confidences[0] is not None and draft.safety.confidences[0].meaning == meaning(0.2, 0.95)
    assert (draft.safety.decoding, draft.safety.checks, draft.safety.critical) == ("", (), ())


def test_a_draft_without_safety_values_is_the_sr_it_was(
    ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path
) -> None:
    """An older draft (no scores, no checks, no decoding path) gets no new items, with or without DraftSafety."""
    source, seen = ct
    bare = tuple(finding.bare for finding in FINDINGS)
    uids = {"sop_instance_uid": generate_uid(), "series_instance_uid": generate_uid()}
    without = build_draft_sr(a_report(seen, bare), source, **uids)
    nothing = DraftSafety.of(Document(findings=bare), 0.5, 0.8)
    with_empty = build_draft_sr(dataclasses.replace(a_report(seen, bare), safety=nothing), source, **uids)
    assert without == with_empty
    path = tmp_path / "old.dcm"
    without.save_as(path, enforce_file_format=True)
    check_with_tools(path)
    assert read_sr(pydicom.dcmread(path)).safety == ReadSafety(confidences=(None,) * len(bare))


def test_hostile_safety_texts_still_make_a_valid_sr(ct: tuple[Dataset, tuple[SeenFrame, ...]], tmp_path: Path) -> None:
    """A matched phrase is the model's text: stored values are read leniently and cleaned before they reach the SR."""
    source, seen = ct
    stored: dict[str, Any] = {
        "findings": [{"text": "Pneumothorax.", "images": [1], "confidence": 1}],
        "critical": [
            {
                "finding": 1,
                "code": "pneumothorax",
                "label": "Pneumothorax",
                "source": "text",
                "phrase": "x\\y ^z \u00e9",
            },
            {"finding": 1, "code": "bad", "label": "Bad", "source": "text", "phrase": "bell\x07"},
        ],
        "decoding": "free-fallback",
        "confidence_method": "m" * 500,
    }
    document = Document.read(stored)
    safety = DraftSafety.of(document, 0.5, 0.8)
    report = dataclasses.replace(a_report(seen, document.findings), safety=safety)
    reading: SrReading = draft_and_signed(source, report, tmp_path)[0]
    [confidence] = reading.safety.confidences
    assert confidence is not None and confidence.score == 1.0 and confidence.band == "high"
    assert reading.safety.critical == ('Finding 1: Pneumothorax (pneumothorax), from the text: "x\\y ^z \u00e9"',)
    assert reading.safety.decoding == "free-fallback"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'pacs-vlm.sqlite'}"
    upgrade(url)
    return Settings(data_dir=data_dir, database_url=url, confidence_low=0.6, confidence_high=0.9)


def test_the_stored_draft_gets_its_safety_items_and_signing_drops_them(settings: Settings, tmp_path: Path) -> None:
    study_id, headers = store_study(settings, write_ct_series(tmp_path / "ct", 3, rows=16, columns=16))
    report_id = add_report(settings, study_id, evidence_of(headers))
    texts: list[dict[str, Any]] = DRAFT_FINDINGS["findings"]  # type: ignore[assignment]
    scored = {
        **DRAFT_FINDINGS,
        "findings": [{**f, "confidence": c} for f, c in zip(texts, (0.95, 0.7), strict=True)],
        "checks": [{"finding": 2, "kind": "image", "message": "image 4 is cited; the draft has images 1 to 3"}],
        "decoding": "response_format",
        "confidence_method": METHOD,
    }
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.findings = scored
    path = ensure_draft_sr(settings, report_id)
    check_with_tools(path)
    draft = read_sr(pydicom.dcmread(path))
    assert [(c.score, c.band) if c else None for c in draft.safety.confidences] == [(0.95, "high"), (0.7, "medium")]
    assert draft.safety.decoding == "response_format"
    assert draft.safety.checks == ("Finding 2, image: image 4 is cited; the draft has images 1 to 3",)
    revision_id = sign_report(settings, report_id, author="Doe^Jane", organization="St Elsewhere")  # unedited
    with session_scope(settings.database_url) as session:
        [signed] = [r for r in report_revisions(session, report_id) if r.revision_id == revision_id]
    assert signed.sr_path is not None
    signed_path = settings.data_dir / signed.sr_path
    check_with_tools(signed_path)
    reading = read_sr(pydicom.dcmread(signed_path))
    assert [f.text for f in reading.findings] == [f["text"] for f in texts]
    assert reading.safety == ReadSafety(confidences=(None, None))
