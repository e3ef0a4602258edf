"""Which studies are priors and which of their series are retrieved (pure rules, no peers needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from integration.imaging.routing import DEFAULT_RULES, PriorPolicy, RoutingRule, first_rule_accepting
from integration.priors.archive import SeriesMatch, StudyMatch
from integration.priors.matching import (
    Candidate,
    CurrentStudy,
    choose_prior_series,
    choose_priors,
    description_similarity,
    prior_series_rule,
    series_kind,
)
from integration.store.priors import LocalStudy

TODAY = date(2026, 12, 5)
CURRENT = CurrentStudy(
    study_id=1,
    study_uid="1.2.3.100",
    patient_id="PRI-001",
    issuer="HOSP-A",
    study_date="20261201",
    modality="CT",
    body_part="CHEST",
    region="CHEST",
    description="CT THORAX",
)


def study(uid: str, day: str | None, **changes: object) -> StudyMatch:
    base = StudyMatch(
        source="pacs",
        study_uid=uid,
        patient_id="PRI-001",
        issuer="HOSP-A",
        study_date=day,
        modalities=("CT",),
        description="CT CHEST",
        accession=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def uids(chosen: Sequence[Candidate]) -> list[str]:
    return [c.study_uid for c in chosen]


def test_same_patient_id_and_issuer_only() -> None:
    other_issuer = study("1.1", "20250101", issuer="HOSP-B")
    no_issuer = study("1.2", "20250102", issuer=None)
    other_id = study("1.3", "20250103", patient_id="PRI-002")  # the namesake: another ID is never used
    same = study("1.4", "20240101")
    chosen = choose_priors(CURRENT, [other_issuer, no_issuer, other_id, same], PriorPolicy(count=5), TODAY)
    assert uids(chosen) == ["1.4"]
    # Without an issuer on either side the ID alone decides; an issuer on one side only refuses.
    bare = replace(CURRENT, issuer=None)
    assert uids(choose_priors(bare, [no_issuer, same], PriorPolicy(count=5), TODAY)) == ["1.2"]


def test_earlier_date_only_never_itself_and_within_the_look_back() -> None:
    candidates = [
        study("1.2.3.100", "20250101"),  # the current study itself
        study("2.1", "20261201"),  # the same day
        study("2.2", "20270101"),  # the future
        study("2.3", None),  # no date
        study("2.4", "20220101"),  # older than a 1-year look-back, within 5 years
        study("2.6", "20201201"),  # older than 5 years
        study("2.5", "20260101"),
    ]
    assert uids(choose_priors(CURRENT, candidates, PriorPolicy(count=5, lookback_days=365), TODAY)) == ["2.5"]
    assert uids(choose_priors(CURRENT, candidates, PriorPolicy(count=5), TODAY)) == ["2.5", "2.4"]


def test_modality_rule_allows_another_modality_only_when_configured() -> None:
    radiograph = replace(CURRENT, modality="CR", description="THORAX PA")
    ct = study("3.1", "20260101", modalities=("CT",))
    cr = study("3.2", "20250101", modalities=("CR",), description="CHEST PA")
    assert uids(choose_priors(radiograph, [ct, cr], PriorPolicy(), TODAY)) == ["3.2"]
    policy = PriorPolicy(modalities=("CR", "DX", "CT"))
    assert uids(choose_priors(radiograph, [ct, cr], policy, TODAY)) == ["3.1"]


def test_region_by_body_region_or_by_description_similarity() -> None:
    head = study("4.1", "20260301", description="CT HEAD WITHOUT CONTRAST")
    chest = study("4.2", "20260201", description="CT THORAX WITH CONTRAST")
    assert uids(choose_priors(CURRENT, [head, chest], PriorPolicy(count=5), TODAY)) == ["4.2"]
    # No region word on either side: the descriptions' words decide.
    unknown = replace(CURRENT, region=None, body_part=None, description="Follow-up nodule left upper lobe")
    similar = study("4.3", "20260101", description="Nodule left upper lobe")
    different = study("4.4", "20260102", description="Left knee follow-up")
    assert uids(choose_priors(unknown, [similar, different], PriorPolicy(count=5), TODAY)) == ["4.3"]
    assert uids(choose_priors(unknown, [different], PriorPolicy(match_region=False), TODAY)) == ["4.4"]
    # Words that name no region (modality, contrast) do not make descriptions similar.
    assert description_similarity("CT with contrast", "CT without contrast") == 0.0
    assert description_similarity("nodule left lobe", "left lobe nodule") == 1.0


def test_most_recent_count_and_the_local_copy_wins() -> None:
    archived = [study(f"5.{n}", f"202{n}0101") for n in range(1, 6)]
    held = LocalStudy(
        study_id=7,
        study_uid="5.5",
        patient_id="PRI-001",
        issuer="HOSP-A",
        study_date="20250101",
        modalities=("CT",),
        body_parts=("CHEST",),
        description=None,
        accession=None,
        role="prior",
        instances=3,
        has_signed_report=False,
    )
    both: list[Candidate] = [*archived, held]
    chosen = choose_priors(CURRENT, both, PriorPolicy(count=2), TODAY)
    assert uids(chosen) == ["5.5", "5.4"]
    assert chosen[0] is held
    assert choose_priors(CURRENT, archived, PriorPolicy(count=0), TODAY) == []
    assert choose_priors(replace(CURRENT, patient_id=None), archived, PriorPolicy(), TODAY) == []


def series(uid: str, **values: object) -> SeriesMatch:
    base = SeriesMatch(
        series_uid=uid,
        modality="CT",
        series_number=1,
        description=None,
        body_part="CHEST",
        instances=10,
        sop_class_uids=("1.2.840.10008.5.1.4.1.1.2",),
        image_types=("ORIGINAL", "PRIMARY", "AXIAL"),
    )
    return replace(base, **values)  # type: ignore[arg-type]


PRIOR_CT = [
    series("6.1", series_number=1, instances=2, image_types=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    series("6.2", series_number=2, instances=300),  # thin axial
    series("6.3", series_number=3, instances=60),  # thick axial
    series("6.4", series_number=990, modality="SR", sop_class_uids=("1.2.840.10008.5.1.4.1.1.88.67",)),
    series("6.5", series_number=991, modality="SR", sop_class_uids=("1.2.840.10008.5.1.4.1.1.88.33",)),
    series(
        "6.6",
        series_number=992,
        modality="OT",
        sop_class_uids=("1.2.840.10008.5.1.4.1.1.7",),
        image_types=("DERIVED", "SECONDARY", "SCREEN SAVE"),
    ),
    series("6.7", series_number=993, modality="DOC", sop_class_uids=("1.2.840.10008.5.1.4.1.1.104.1",)),
    series("6.8", series_number=994, modality="KO", sop_class_uids=("1.2.840.10008.5.1.4.1.1.88.59",)),
]


def test_series_choice_takes_the_largest_accepted_series_and_the_sr() -> None:
    rule = first_rule_accepting(DEFAULT_RULES, [("CT", ("CHEST",))], None)
    assert rule is not None and rule.name == "ct-chest"
    choice = choose_prior_series(PRIOR_CT, rule)
    assert choice.images == ("6.2",)
    assert choice.reports == ("6.5",)  # the dose SR is derived, not a report
    assert choice.series_uids == ("6.2", "6.5")
    assert choice.pdf  # noted, never retrieved
    assert [series_kind(s) for s in PRIOR_CT] == [
        "derived", "image", "image", "derived", "report", "derived", "pdf", "derived"
    ]  # fmt: skip


def test_series_choice_across_series_and_derived_on_request() -> None:
    across = RoutingRule(name="all-ct", modality="CT", across_series=True)
    assert choose_prior_series(PRIOR_CT, across).images == ("6.2", "6.3")
    derived = RoutingRule(name="with-derived", modality="CT", across_series=True, include_derived=True)
    assert choose_prior_series(PRIOR_CT, derived).images == ("6.1", "6.2", "6.3")


def test_prior_of_another_modality_is_chosen_by_its_own_rule() -> None:
    cr_rule = first_rule_accepting(DEFAULT_RULES, [("CR", ("CHEST",))], None)
    assert cr_rule is not None and cr_rule.name == "cr"
    assert choose_prior_series(PRIOR_CT, cr_rule).images == ()
    rule = prior_series_rule(DEFAULT_RULES, cr_rule, PRIOR_CT, None)
    assert rule.name == "ct-chest"
    assert choose_prior_series(PRIOR_CT, rule).images == ("6.2",)


def test_current_study_from_the_first_instance(tmp_path: Path) -> None:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID = "PRI-001"
    ds.IssuerOfPatientID = "HOSP-A"
    ds.StudyDate = "20261201"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "CT THORAX"
    path = tmp_path / "first.dcm"
    ds.save_as(path)
    current = CurrentStudy.from_file(path, study_id=3, site_id=2, calling_ae="CT1")
    assert (current.patient_id, current.issuer, current.study_date) == ("PRI-001", "HOSP-A", "20261201")
    assert (current.modality, current.body_part, current.region) == ("CT", "CHEST", "CHEST")
    assert (current.study_id, current.site_id, current.calling_ae) == (3, 2, "CT1")
    assert current.study_uid == str(ds.StudyInstanceUID)
