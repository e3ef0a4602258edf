"""Drafting with priors: the real pipeline and the real transformers backend on a tiny multi-image model.

The prior's record is built here as the store gives it (:class:`~integration.store.priors.PriorsView`);
finding and fetching it are tested in ``tests/priors``.  What is checked is what the model is given:
the prior's report before the images, the prior images first and labelled as prior, the evidence of
each image naming its study, and the line that says why there is no prior.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from integration.config import Settings
from integration.findings import Document
from integration.samples import write_ct_series
from integration.store.priors import PriorsView, PriorView
from integration.store.reports import ClaimedJob, InstanceFile
from integration.store.tables import PriorSearchState, PriorState
from models.backend import GenerationRequest, GenerationResult
from models.prompts import PatientContext
from models.transformers_backend import TransformersBackend
from worker.comparison import (
    NO_PRIOR,
    NOT_AVAILABLE,
    CurrentHeader,
    build_comparison,
    prior_header_names,
    read_current_header,
)
from worker.outbound import REMOVED
from worker.pipeline import draft_study

PRIOR_REPORT = "Small left pleural effusion. Reported by Dr. Okonkwo on 2024-03-01, accession ACC55501234."


class PromptRecordingBackend(TransformersBackend):
    """The real transformers backend, keeping the exact prompt text (chat template applied) of each request."""

    rendered: list[str]
    requests: list[GenerationRequest]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.requests = list(requests)
        self.rendered = [self.render_prompt(request) for request in requests]
        return super().generate(requests)


@pytest.fixture(scope="module")
def medgemma(smoke_medgemma_dir: Path) -> PromptRecordingBackend:
    return PromptRecordingBackend(smoke_medgemma_dir, device="cpu", max_new_tokens=4)


def stored(store: Path, folder: str, slices: int, **header: str) -> list[InstanceFile]:
    """A CT series written under the store, with header values set, as the store lists its instances."""
    files = write_ct_series(store / folder, slices, rows=32, columns=32)
    result = []
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in header.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        result.append(
            InstanceFile(str(path.relative_to(store)), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), "CT", "CHEST")
        )
    return result


def view(state: PriorSearchState, priors: Sequence[PriorView] = (), reason: str | None = None) -> PriorsView:
    now = datetime.now(UTC)
    return PriorsView(1, state, reason, now, now, now, tuple(priors))


def prior_view(stored_files: Sequence[InstanceFile], study_uid: str, **values: object) -> PriorView:
    fields: dict[str, object] = {
        "id": 1,
        "prior_study_uid": study_uid,
        "prior_study_id": 2,
        "rank": 1,
        "source": "pacs",
        "state": PriorState.READY,
        "reason": None,
        "study_date": "20240301",
        "modality": "CT",
        "description": "CT CHEST WITH CONTRAST",
        "accession": "ACC55501234",
        "report_text": PRIOR_REPORT,
        "report_source": "sr",
        "series_uids": (stored_files[0].series_uid,) if stored_files else (),
        "instances": len(stored_files),
        "bytes": 0,
        "seconds": 0.1,
        "files": tuple(stored_files),
    }
    fields.update(values)
    return PriorView(**fields)  # type: ignore[arg-type]


@pytest.fixture
def study(tmp_path: Path) -> Callable[[], tuple[Settings, ClaimedJob, list[InstanceFile], list[InstanceFile], str]]:
    def make() -> tuple[Settings, ClaimedJob, list[InstanceFile], list[InstanceFile], str]:
        store = tmp_path / "store"
        patient = {"PatientName": "Kowalczyk^Agnieszka", "PatientID": "PRI-001", "PatientSex": "F"}
        current = stored(store, "current", 6, StudyDate="20260317", PatientBirthDate="19580923", **patient)
        prior = stored(store, "prior", 6, StudyDate="20240301", **patient)
        prior_uid = str(pydicom.dcmread(store / prior[0].storage_path).StudyInstanceUID)
        settings = Settings(data_dir=tmp_path, storage_dir=store, max_new_tokens=4, image_size=64, max_images=4)
        job = ClaimedJob(1, 1, "1.2.3", 1, 1, "CT1")
        return settings, job, current, prior, prior_uid

    return make


def test_the_prior_report_and_images_reach_the_model_before_the_current_study(
    study: Callable[[], tuple[Settings, ClaimedJob, list[InstanceFile], list[InstanceFile], str]],
    medgemma: PromptRecordingBackend,
) -> None:
    settings, job, current, prior, prior_uid = study()
    priors = view(PriorSearchState.DONE, [prior_view(prior, prior_uid)])
    draft = draft_study(settings, job, current, medgemma, priors=priors)
    (prompt,) = medgemma.rendered
    (request,) = medgemma.requests
    assert len(request.images) == 4  # half of the budget for the prior, half for the current study
    # the stable parts first: system prompt, task, patient, the prior and its report, then the images
    report_at = prompt.index("Small left pleural effusion")
    assert "on 2024-03-01" in prompt and "67 years" in prompt and "female" in prompt
    image_tokens = [index for index in range(len(prompt)) if prompt.startswith("<start_of_image>", index)]
    assert len(image_tokens) == 4 and report_at < image_tokens[0]
    prior_label = prompt.index("Image 1: prior study")
    current_label = prompt.index("Image 3: current study")
    assert image_tokens[-1] < prior_label < current_label
    # the evidence names each image's study; prior images first
    prior_sops = {f.sop_instance_uid for f in prior}
    numbers = {e["image"]: e for e in draft.evidence}
    assert numbers[1]["prior"] and numbers[1]["study_uid"] == prior_uid and numbers[1]["sop_instance_uid"] in prior_sops
    assert not numbers[3].get("prior") and numbers[3]["sop_instance_uid"] in {f.sop_instance_uid for f in current}
    document = Document.read(draft.findings)
    assert [p.study_uid for p in document.priors] == [prior_uid] and document.priors[0].report_source == "sr"
    assert document.prior_note == "" and draft.timings["priors"] == 1.0 and draft.timings["prior_images"] == 2.0
    named = "COMPARISON: Compared with CT CHEST WITH CONTRAST (CT) of 2024-03-01."
    assert named in draft.text or f"COMPARISON: {document.comparison}" in draft.text  # noise model: usually silent
    assert document.comparison_text in draft.text


def test_without_a_prior_the_draft_says_so_and_why(
    study: Callable[[], tuple[Settings, ClaimedJob, list[InstanceFile], list[InstanceFile], str]],
    medgemma: PromptRecordingBackend,
) -> None:
    settings, job, current, prior, prior_uid = study()
    draft = draft_study(settings, job, current, medgemma, priors=view(PriorSearchState.DONE))
    assert Document.read(draft.findings).prior_note == NO_PRIOR
    assert f"COMPARISON: {NO_PRIOR}" in draft.text
    assert NO_PRIOR in medgemma.rendered[0] and len(medgemma.requests[0].images) == 4

    down = view(PriorSearchState.FAILED, reason="PACS 'pacs' did not answer (connection refused)")
    draft = draft_study(settings, job, current, medgemma, priors=down)
    note = Document.read(draft.findings).prior_note
    assert note.startswith(NOT_AVAILABLE) and "connection refused" in note and note in draft.text

    failed_fetch = prior_view(prior, prior_uid, state=PriorState.UNAVAILABLE, reason="C-GET failed: 0xA702", files=())
    draft = draft_study(settings, job, current, medgemma, priors=view(PriorSearchState.DONE, [failed_fetch]))
    assert "C-GET failed: 0xA702" in Document.read(draft.findings).prior_note
    assert not any(e.get("prior") for e in draft.evidence)

    still_running = draft_study(settings, job, current, medgemma, priors=view(PriorSearchState.RUNNING))
    assert "did not finish" in Document.read(still_running.findings).prior_note


def test_outside_the_trust_boundary_a_prior_is_placed_by_days_and_its_report_deidentified(
    study: Callable[[], tuple[Settings, ClaimedJob, list[InstanceFile], list[InstanceFile], str]],
) -> None:
    settings, _job, current, prior, prior_uid = study()
    header = read_current_header(settings.instance_root / current[0].storage_path)
    assert header == CurrentHeader("20260317", 67, "female", ("Kowalczyk^Agnieszka",))
    assert header.patient(deidentified=True) == PatientContext(age="60-69 years")  # a band, no sex
    assert header.patient(deidentified=False) == PatientContext(age="67 years", sex="female")
    from integration.imaging.routing import DEFAULT_RULES

    comparison = build_comparison(
        view(PriorSearchState.DONE, [prior_view(prior, prior_uid, report_text=PRIOR_REPORT + " Kowalczyk agreed.")]),
        instance_root=settings.instance_root,
        current=header,
        rule=DEFAULT_RULES[0],
        rules=DEFAULT_RULES,
        image_budget=2,
        image_size=64,
        deidentified=True,
    )
    (context,) = comparison.contexts
    assert context.when == f"{(datetime(2026, 3, 17) - datetime(2024, 3, 1)).days} days earlier"
    assert context.description is None and context.report is not None
    for value in ("2024-03-01", "Okonkwo", "ACC55501234", "Kowalczyk"):
        assert value not in context.report
    assert "Small left pleural effusion." in context.report and REMOVED in context.report
    assert all(label.startswith("prior study") for label in comparison.labels) and len(comparison.images) == 2


def prior_report_sr(path: Path, study_uid: str) -> Path:
    """A prior's SR report whose verifying observer and a nested PNAME item name its physicians."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), "SR"
    ds.VerifyingObserverSequence = [Dataset()]
    ds.VerifyingObserverSequence[0].VerifyingObserverName = "Haugen^Ingrid"
    observer, container = Dataset(), Dataset()
    observer.ValueType, observer.PersonName = "PNAME", "Brandt^Tobias"
    container.ValueType, container.ContentSequence = "CONTAINER", [observer]
    ds.ContentSequence = [container]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_names_of_a_priors_own_headers_and_its_sr_are_gathered_for_deidentification(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "prior", 3, rows=16, columns=16)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ReferringPhysicianName, ds.NameOfPhysiciansReadingStudy = "Okafor^Ada", ["Lindqvist^Maja", "Ruiz^Pablo"]
        ds.save_as(path)
    header = pydicom.dcmread(files[0])
    sr = prior_report_sr(tmp_path / "prior" / "sr.dcm", str(header.StudyInstanceUID))
    unreadable = tmp_path / "prior" / "gone.dcm"  # a file purged meanwhile adds nothing and stops nothing
    instances = [
        *(InstanceFile(str(p.relative_to(tmp_path)), str(header.SOPInstanceUID), "ct", "CT", "CHEST") for p in files),
        InstanceFile("prior/gone.dcm", "1.2.3", "gone", "CT", None),
        InstanceFile(str(sr.relative_to(tmp_path)), "1.2.4", "sr", "SR", None),
    ]
    assert not unreadable.exists()
    prior = PriorView(
        id=1, prior_study_uid=str(header.StudyInstanceUID), prior_study_id=2, rank=1, source="pacs",
        state=PriorState.READY, reason=None, study_date="20240301", modality="CT", description=None,
        accession=None, report_text="Discussed with Lindqvist and Brandt.", report_source="sr", series_uids=(),
        instances=4, bytes=0, seconds=0.1, files=tuple(instances),
    )  # fmt: skip
    names = prior_header_names(prior, tmp_path)
    assert set(names) == {
        str(header.PatientName), "Okafor^Ada", "Lindqvist^Maja", "Ruiz^Pablo", "Haugen^Ingrid", "Brandt^Tobias"
    }
    assert len(names) == len(set(names))  # one header per series is read: the CT's three give each name once
