"""Routing rules on plain attributes, the prior policy, body regions, and derived series left out unless asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from integration.imaging.instances import derived_kind, read_instance
from integration.imaging.routing import DEFAULT_RULES, PriorPolicy, RoutingRule, body_region
from integration.imaging.selection import NoImages, prepare_study
from integration.imaging.slices import group_series
from integration.imaging.windows import body_region as header_region
from integration.intake.photo import PhotoDetails, photo_to_dicom
from tests.imaging.builders import axial_series, dataset, uids, write

CT_ONLY = [RoutingRule(name="ct", modality="CT", max_images=4)]
SECONDARY = ["DERIVED", "SECONDARY"]
CHEST = {"BodyPartExamined": "CHEST"}


def test_prior_policy_defaults_and_limits() -> None:
    policy = RoutingRule().priors
    assert (policy.count, policy.lookback_days, policy.modalities, policy.match_region, policy.max_images) == (
        1,
        1826,
        (),
        True,
        None,
    )
    for bad in ({"count": 6}, {"count": -1}, {"lookback_days": 0}, {"max_images": 65}, {"max_images": 0}):
        with pytest.raises(ValidationError):
            PriorPolicy.model_validate(bad)
    with pytest.raises(ValidationError, match="extra"):
        PriorPolicy.model_validate({"number": 2})
    with pytest.raises(ValidationError, match="empty"):
        PriorPolicy(modalities=(" ",))
    rule = RoutingRule.model_validate(
        {"modality": "CR", "include_derived": True, "priors": {"count": 2, "modalities": [" cr", "CT", "CR"]}}
    )
    assert rule.include_derived and rule.priors == PriorPolicy(count=2, modalities=("CR", "CT"))
    assert all(not r.include_derived and r.priors == PriorPolicy() for r in DEFAULT_RULES)


def test_body_region_reads_the_body_part_first_then_the_descriptions() -> None:
    assert body_region("CHEST") == "CHEST"
    assert body_region(None, "CT Thorax 1.0 B31f") == "CHEST"
    assert body_region("ABDOMEN", "chest") == "ABDOMEN"
    assert body_region("", None, "CT HEAD W/O") == "HEAD"
    assert body_region("KNEE", "Knee left") is None
    assert body_region(None) is None


def test_the_header_region_uses_the_same_words(tmp_path: Path) -> None:
    (path,) = write(tmp_path, [dataset(generate_uid(), SeriesDescription="Lungs 1mm", StudyDescription="CT HEAD")])
    assert header_region(pydicom.dcmread(path)) == "CHEST" == read_instance(path).region


def test_accepts_attributes_is_what_accepts_checks() -> None:
    chest = RoutingRule(modality="CT", body_part="CHEST")
    assert chest.accepts_attributes("CT", ["CHEST"], None)
    assert chest.accepts_attributes("ct", [None, "Thorax"], "ANY_AE"), "a Body Part Examined word names the region"
    assert not chest.accepts_attributes("CT", ["HEAD"], None)
    assert not chest.accepts_attributes("MR", ["CHEST"], None)
    assert not chest.accepts_attributes(None, ["CHEST"], None)
    assert not chest.accepts_attributes("CT", [], None)
    from_er = RoutingRule(calling_ae="ER_CT")
    assert from_er.accepts_attributes(None, [], " ER_CT ") and not from_er.accepts_attributes("CT", [], None)
    assert RoutingRule().accepts_attributes(None, (), None)


def test_accepts_delegates_to_accepts_attributes(tmp_path: Path) -> None:
    paths = write(tmp_path, axial_series(2, SeriesDescription="Thorax 1.0"))
    (series,) = group_series([read_instance(path) for path in paths])
    for rule in (*DEFAULT_RULES, RoutingRule(body_part="THORAX"), RoutingRule(body_part="HEAD")):
        parts = [series.region, *(i.body_part for i in series.instances)]
        assert rule.accepts(series, "AE") == rule.accepts_attributes(series.modality, parts, "AE")


@pytest.mark.parametrize(
    ("sop_class", "image_type", "attributes", "kind"),
    [
        (CTImageStorage, ["ORIGINAL", "PRIMARY", "AXIAL"], {}, None),
        (CTImageStorage, ["ORIGINAL", "PRIMARY", "LOCALIZER"], {}, "localizer"),
        (CTImageStorage, ["DERIVED", "SECONDARY", "CORONAL"], {}, "reformat or projection"),
        (CTImageStorage, ["DERIVED", "PRIMARY", "AXIAL"], {}, None),
        (CTImageStorage, ["ORIGINAL", "PRIMARY", "AXIAL"], {"description": "LOW DOSE CHEST"}, None),
        (CTImageStorage, ["ORIGINAL", "PRIMARY"], {"description": "Dose Report"}, "dose report"),
        (SecondaryCaptureImageStorage, [*SECONDARY, "DOSE_INFO"], {}, "dose report"),
        (SecondaryCaptureImageStorage, [*SECONDARY, "SCREEN SAVE"], {}, "screen capture"),
        (SecondaryCaptureImageStorage, SECONDARY, {"conversion_type": "WSD"}, "secondary capture"),
        (SecondaryCaptureImageStorage, SECONDARY, {"conversion_type": "SD"}, "scanned document"),
        (SecondaryCaptureImageStorage, SECONDARY, {"modality": "DOC"}, "scanned document"),
        (SecondaryCaptureImageStorage, [*SECONDARY, "OTHER"], {"conversion_type": "DI", "modality": "XC"}, None),
        (SecondaryCaptureImageStorage, SECONDARY, {"conversion_type": "SI"}, None),
        (
            SecondaryCaptureImageStorage,
            ["ORIGINAL", "PRIMARY"],
            {"description": "Patient Protocol"},
            "protocol or report screen",
        ),
        (MRImageStorage, ["DERIVED", "PRIMARY", "ADC"], {}, None),
    ],
)
def test_derived_kind(sop_class: str, image_type: list[str], attributes: dict[str, str], kind: str | None) -> None:
    assert derived_kind(sop_class, image_type, **attributes) == kind


def derived_study() -> tuple[list[pydicom.Dataset], dict[str, list[pydicom.Dataset]]]:
    """A chest CT: 5 axial slices, and larger derived series beside them (which the largest-series rule would take)."""
    axial = axial_series(5, series_number=2, **CHEST)
    sc = SecondaryCaptureImageStorage
    derived = {
        "localizer": axial_series(1, series_number=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        "reformat or projection": axial_series(9, series_number=3, ImageType=[*SECONDARY, "CORONAL"], **CHEST),
        "dose report": [
            dataset(generate_uid(), sop_class=sc, shape=(8, 8, 8), series_number=999, SeriesDescription="Dose Report")
        ],
        "scanned document": [
            dataset(generate_uid(), sop_class=sc, modality="OT", shape=(6, 8, 8), ConversionType="SD")
        ],
    }
    return axial, derived


def test_derived_series_are_never_chosen_unless_the_rule_asks(tmp_path: Path) -> None:
    axial, derived = derived_study()
    paths = write(tmp_path, [*axial, *(ds for group in derived.values() for ds in group)])
    prepared = prepare_study(paths, rules=[RoutingRule(modality="CT", body_part="CHEST", max_images=5)])
    assert uids(prepared.images) == [[ds.SOPInstanceUID] for ds in axial]
    reasons = dict(prepared.skipped)
    for kind, group in derived.items():
        assert all(reasons.pop(ds.SOPInstanceUID) == f"{kind} (derived or secondary image)" for ds in group)
    assert not reasons
    prepared = prepare_study(paths)
    assert prepared.rule.name == "ct-chest" and prepared.series_uids == [axial[0].SeriesInstanceUID]

    rules = [RoutingRule(name="reformats", modality="CT", body_part="CHEST", include_derived=True, max_images=3)]
    taken = prepare_study(paths, rules=rules)
    assert taken.series_uids == [derived["reformat or projection"][0].SeriesInstanceUID], (
        "the largest series, derived or not"
    )
    assert not taken.skipped


def test_a_study_of_derived_images_only_has_no_image_for_the_model(tmp_path: Path) -> None:
    _, derived = derived_study()
    paths = write(tmp_path, [*derived["localizer"], *derived["dose report"]])
    with pytest.raises(NoImages, match=r"no rule takes derived images\): 1 x localizer .*1 x dose report"):
        prepare_study(paths)
    assert len(prepare_study(paths, rules=[RoutingRule(include_derived=True)]).images) == 8


def test_a_study_of_reformats_or_workstation_captures_only_is_read_from_them(tmp_path: Path) -> None:
    _, derived = derived_study()
    reformats = derived["reformat or projection"]
    paths = write(tmp_path / "reformats", [*derived["localizer"], *reformats])
    prepared = prepare_study(paths, rules=[RoutingRule(modality="CT", body_part="CHEST", max_images=3)])
    assert prepared.series_uids == [reformats[0].SeriesInstanceUID]  # the localizer stays out even so
    assert dict(prepared.skipped) == {derived["localizer"][0].SOPInstanceUID: "localizer (derived or secondary image)"}
    series_uid = generate_uid()
    captures = [
        dataset(series_uid, sop_class=SecondaryCaptureImageStorage, modality="NM", number=n, ConversionType="WSD")
        for n in (1, 2)
    ]
    assert derived_kind(SecondaryCaptureImageStorage, [], conversion_type="WSD") == "secondary capture"
    assert len(prepare_study(write(tmp_path / "nm", captures)).images) == 2


def test_an_uploaded_photo_is_still_an_image_for_the_model(tmp_path: Path) -> None:
    details = PhotoDetails("PH-7", "Photo^Patty", "19800101", "F", "HAND", "Lesion?", "Hand photo", "L")
    photo = photo_to_dicom(np.full((32, 48, 3), 120, dtype=np.uint8), details)
    path = tmp_path / "photo.dcm"
    path.write_bytes(photo.part10)
    instance = read_instance(path)
    assert instance.image_type[:2] == ("DERIVED", "SECONDARY") and instance.derived is None
    prepared = prepare_study([path])
    assert (prepared.rule.name, len(prepared.images), prepared.skipped) == ("xc", 1, [])
