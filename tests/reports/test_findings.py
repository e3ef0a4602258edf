"""The findings document type: lenient reading of stored JSON, strict reading of edits, evidence, the cleaner,
the comparison with priors and the plain-text rendering."""

from __future__ import annotations

import pytest

from integration.findings import (
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    MAX_PRIOR_NOTE_CHARS,
    MAX_PRIORS,
    MAX_SECTION_CHARS,
    Document,
    Evidence,
    Finding,
    InvalidFindings,
    PriorReference,
    clean_text,
    edited_findings,
    edited_text,
    evidence_of,
    images_of,
    kept_boxes,
    valid_box,
)

UID = "1.2.826.0.1.3680043.8.498"


def entry(image: object = 1, frame: object = None, **uids: object) -> dict[str, object]:
    values: dict[str, object] = {"sop_class_uid": f"{UID}.1", "sop_instance_uid": f"{UID}.2", "series_uid": f"{UID}.3"}
    return {"image": image, **({} if frame is None else {"frame": frame}), **values, **uids}


def test_the_cleaner_removes_what_breaks_an_encoding_and_caps() -> None:
    hostile = "  bell\x07 nul\x00 esc\x1b C1\x9b\x85 lone\ud800 non\ufffe\uffff  "
    assert clean_text(hostile) == "bell nul esc C1 lone non"
    assert clean_text("tab\tlf\ncr\r") == "tab\tlf\ncr"
    assert clean_text("line\u2028para\u2029end") == "line\npara\nend"
    assert clean_text(" <b>ünï</b> 肺 🫁 ") == "<b>ünï</b> 肺 🫁"
    assert clean_text(5) == "5" and clean_text(" x ", strip=False) == " x "
    assert clean_text("abcdef", 4) == "abc\u2026" and clean_text("abcd", 4) == "abcd"
    assert clean_text("ab   cdef", 4) == "ab\u2026"  # cut, then the trailing white space before the ellipsis


def test_a_finding_validates_itself() -> None:
    assert Finding("Nodule", (2, 1)).as_json() == {"text": "Nodule", "images": [2, 1]}
    for text in ("", "  padded ", "bell\x07", "x" * (MAX_FINDING_CHARS + 1), 5):
        with pytest.raises(InvalidFindings, match="text"):
            Finding(text)  # type: ignore[arg-type]
    for images in ((0,), (1, 1), (True,), [1], ("1",)):
        with pytest.raises(InvalidFindings, match="image numbers"):
            Finding("Nodule", images)  # type: ignore[arg-type]
    assert Finding("x" * MAX_FINDING_CHARS).text == "x" * MAX_FINDING_CHARS


def test_a_document_validates_itself() -> None:
    with pytest.raises(InvalidFindings, match=f"at most {MAX_FINDINGS}"):
        Document(tuple(Finding(f"f{i}") for i in range(MAX_FINDINGS + 1)))
    with pytest.raises(InvalidFindings):
        Document(impression="y" * (MAX_SECTION_CHARS + 1))
    with pytest.raises(InvalidFindings):
        Document(limitations="bell\x07")
    with pytest.raises(InvalidFindings):
        Document(({"text": "x"},))  # type: ignore[arg-type]
    document = Document((Finding("a", (1,)),), "imp", "lim", structured=False, problems=("repaired",))
    assert document.as_json() == {
        "findings": [{"text": "a", "images": [1]}],
        "impression": "imp",
        "limitations": "lim",
        "structured": False,
        "problems": ["repaired"],
        "comparison": "",
        "priors": [],
        "prior_note": "",
    }
    assert Document.read(document.as_json()) == document and Document.read(document) is document


@pytest.mark.parametrize("stored", [None, [], "text", 5, {}, {"findings": None}, {"findings": "x"}, {"findings": {}}])
def test_stored_json_without_findings_reads_as_an_empty_document(stored: object) -> None:
    assert Document.read(stored) == Document()


def test_odd_stored_json_is_read_leniently() -> None:
    stored = {
        "findings": [
            {"text": " Nodule\x00 ", "images": [2, 2, 0, -1, True, "3", 1.0, 5]},
            {"text": "No images key"},
            {"text": "Images not a list", "images": "1, 2"},
            {"text": "   "},
            {"images": [1]},
            {"text": 7},
            "a loose string",
            None,
            {"text": "x" * 5000, "images": (4,)},
        ],
        "impression": 5,
        "limitations": " lim\x1b ",
        "structured": "no",
        "problems": ["p\x00", 3, ""],
        "unknown": "ignored",
    }
    document = Document.read(stored)
    assert [(f.text, f.images) for f in document.findings[:3]] == [
        ("Nodule", (2, 5)),
        ("No images key", ()),
        ("Images not a list", ()),
    ]
    assert len(document.findings) == 4 and document.findings[3].images == (4,)
    assert document.findings[3].text == "x" * (MAX_FINDING_CHARS - 1) + "\u2026"
    assert (document.impression, document.limitations) == ("", "lim")
    assert document.structured is True and document.problems == ("p",)
    assert Document.read({"structured": False}).structured is False


def test_lenient_reading_keeps_the_cited_images_the_draft_has_and_caps_the_count() -> None:
    stored = {"findings": [{"text": "a", "images": [1, 3, 9]}, {"text": "b", "images": [9]}]}
    assert [f.images for f in Document.read(stored, images_seen={1, 3}).findings] == [(1, 3), ()]
    assert [f.images for f in Document.read(stored).findings] == [(1, 3, 9), (9,)]
    many = {"findings": [{"text": f"finding {i}"} for i in range(MAX_FINDINGS + 20)]}
    findings = Document.read(many).findings
    assert len(findings) == MAX_FINDINGS and findings[-1].text == f"finding {MAX_FINDINGS - 1}"


def test_edits_are_read_strictly() -> None:
    findings = edited_findings([{"text": " Nodule\x00 ", "images": [1, 1, 2]}, {"text": "Clear"}, Finding("F", (2,))])
    assert findings == (Finding("Nodule", (1, 2)), Finding("Clear"), Finding("F", (2,)))
    refused = [
        ({"findings": []}, "JSON list"),
        ([{"text": f"f{i}"} for i in range(MAX_FINDINGS + 1)], f"at most {MAX_FINDINGS}"),
        (["loose"], 'finding 1 must be an object with a "text" string'),
        ([{"text": "a"}, {"images": [1]}], 'finding 2 must be an object with a "text" string'),
        ([{"text": 5}], '"text" string'),
        ([{"text": "a", "images": "1"}], '"images" must be a list'),
        ([{"text": "a", "images": [0]}], '"images" must be a list'),
        ([{"text": "a", "images": [True]}], '"images" must be a list'),
        ([{"text": "a", "images": [3]}], r"cites image\(s\) \[3\]; the draft has images \[1, 2\]"),
        ([{"text": " \x00 "}], "finding 1 must not be empty"),
        ([{"text": "x" * (MAX_FINDING_CHARS + 1)}], f"at most {MAX_FINDING_CHARS} are allowed"),
    ]
    for value, message in refused:
        with pytest.raises(InvalidFindings, match=message):
            edited_findings(value, images_seen={1, 2})
    assert edited_findings([{"text": "a", "images": [7]}]) == (Finding("a", (7,)),)  # no evidence: not checked


def test_edited_text_is_cleaned_or_refused() -> None:
    assert edited_text(" Suspicious\x07 ", MAX_SECTION_CHARS, "impression", required=False) == "Suspicious"
    assert edited_text("", MAX_SECTION_CHARS, "impression", required=False) == ""
    assert edited_text("w" * 10 + "\x00", 10, "finding text", required=True) == "w" * 10
    with pytest.raises(InvalidFindings, match="the reason is required"):
        edited_text(None, 10, "the reason", required=True)
    with pytest.raises(InvalidFindings, match="finding text must not be empty"):
        edited_text(" \x00\n", 10, "finding text", required=True)
    with pytest.raises(InvalidFindings, match="is 11 characters long; at most 10 are allowed"):
        edited_text("w" * 11, 10, "finding text", required=True)


def test_evidence_has_one_validity_rule() -> None:
    assert Evidence.read(entry(2, 3)) == Evidence(2, f"{UID}.1", f"{UID}.2", f"{UID}.3", 3)
    assert Evidence.read(entry(2)) == Evidence.read(entry(2, 0)) == Evidence(2, f"{UID}.1", f"{UID}.2", f"{UID}.3")
    invalid = [
        entry(0),
        entry(True),
        entry("1"),
        entry(None),
        entry(1, -1),
        entry(1, 1.5),
        entry(sop_class_uid="../etc"),
        entry(sop_instance_uid=None),
        entry(series_uid="1.2." + "3" * 70),
        {"image": 1},
        "not a mapping",
    ]
    assert [Evidence.read(e) for e in invalid] == [None] * len(invalid)
    with pytest.raises(InvalidFindings):
        Evidence(1, "x", f"{UID}.2", f"{UID}.3")
    stored = [entry(1), entry(0), entry(2, 4), entry(2, 5), "junk"]
    assert [(e.image, e.frame) for e in evidence_of(stored)] == [(1, 1), (2, 4), (2, 5)]
    assert images_of(evidence_of(stored)) == frozenset({1, 2})
    assert evidence_of({"image": 1}) == () and evidence_of(None) == ()


PRIOR = PriorReference(f"{UID}.9", "20240301", "CT", "CT CHEST W/O", "A123", "sr")


def test_a_prior_reference_validates_itself() -> None:
    assert PRIOR.as_json() == {
        "study_uid": f"{UID}.9",
        "study_date": "20240301",
        "modality": "CT",
        "description": "CT CHEST W/O",
        "accession": "A123",
        "report_source": "sr",
    }
    assert PriorReference.read(PRIOR.as_json()) == PRIOR and PriorReference(f"{UID}.9").modality is None
    for kwargs in (
        {"study_uid": "1.2.x"},
        {"study_uid": f"{UID}.9", "study_date": "2024-03-01"},
        {"study_uid": f"{UID}.9", "description": "two\nlines"},
        {"study_uid": f"{UID}.9", "description": ""},
        {"study_uid": f"{UID}.9", "accession": "A" * 17},
        {"study_uid": f"{UID}.9", "modality": "CT\x07"},
    ):
        with pytest.raises(InvalidFindings, match="prior"):
            PriorReference(**kwargs)
    built = PriorReference.of(f"{UID}.9", "1.3.2024", description=" CT\u202e chest\n " + "x" * 80, accession="")
    assert built.study_date is None and built.accession is None
    assert (
        built.description is not None and built.description.startswith("CT chest xx") and len(built.description) == 64
    )
    with pytest.raises(InvalidFindings, match="valid Study Instance UID"):
        PriorReference.of("../1")
    with pytest.raises(InvalidFindings, match="no patient_name"):
        PriorReference.of(f"{UID}.9", patient_name="DOE^JANE")


def test_the_comparison_and_priors_round_trip_and_old_drafts_read_without_them() -> None:
    document = Document(
        (Finding("Nodule grown", (3,)),), "imp", comparison="Nodule larger than on the prior.", priors=(PRIOR,)
    )
    stored = document.as_json()
    assert stored["comparison"] == "Nodule larger than on the prior." and stored["priors"] == [PRIOR.as_json()]
    assert Document.read(stored) == document
    old = {"findings": [{"text": "a", "images": [1]}], "impression": "", "limitations": "", "structured": True}
    assert Document.read(old) == Document((Finding("a", (1,)),))
    assert (Document.read(old).comparison, Document.read(old).priors, Document.read(old).prior_note) == ("", (), "")
    odd = {
        "comparison": " Unchanged\x00 " + "c" * MAX_SECTION_CHARS,
        "priors": [PRIOR.as_json(), {"study_uid": "bad"}, "junk", {"study_uid": f"{UID}.8", "study_date": 5}],
        "prior_note": ["not", "text"],
    }
    read = Document.read(odd)
    assert read.comparison.startswith("Unchanged c") and len(read.comparison) == MAX_SECTION_CHARS
    assert read.priors == (PRIOR, PriorReference(f"{UID}.8")) and read.prior_note == ""
    assert len(Document.read({"priors": [PRIOR.as_json()] * (MAX_PRIORS + 3)}).priors) == MAX_PRIORS
    assert Document.read({"prior_note": "n" * 900}).prior_note.endswith("\u2026")
    for kwargs in (
        {"comparison": "bell\x07"},
        {"comparison": "c" * (MAX_SECTION_CHARS + 1)},
        {"prior_note": "n" * (MAX_PRIOR_NOTE_CHARS + 1)},
        {"priors": [PRIOR]},
        {"priors": (PRIOR.as_json(),)},
        {"priors": (PRIOR,) * (MAX_PRIORS + 1)},
    ):
        with pytest.raises(InvalidFindings):
            Document(**kwargs)
    assert edited_text(" Stable\x07 ", MAX_SECTION_CHARS, "comparison", required=False) == "Stable"


def test_the_text_has_a_comparison_line_from_the_comparison_or_the_prior_note() -> None:
    document = Document((Finding("Nodule", (1, 2)),), "Growing nodule.", comparison="Nodule new since 2024.")
    assert document.as_text(notice="AI draft.").splitlines() == [
        "AI draft.",
        "",
        "COMPARISON: Nodule new since 2024.",
        "",
        "FINDINGS:",
        "- Nodule [images 1, 2]",
        "",
        "IMPRESSION:",
        "Growing nodule.",
    ]
    none = Document((Finding("Clear"),), prior_note="No prior study available.")
    assert none.as_text().splitlines()[0] == "COMPARISON: No prior study available."
    assert Document((Finding("Clear"),)).as_text() == "FINDINGS:\n- Clear"  # old drafts: as before
    assert Document(comparison="Stable.", prior_note="ignored").comparison_text == "Stable."


def test_evidence_of_a_prior_image_names_its_study() -> None:
    prior = Evidence.read(entry(1, study_uid=f"{UID}.9", prior=True))
    assert prior is not None and prior.prior and prior.study_uid == f"{UID}.9"
    current = Evidence.read(entry(2, study_uid=f"{UID}.7"))
    assert current is not None and not current.prior and current.study_uid == f"{UID}.7"
    assert Evidence.read(entry(1, prior="yes")) == Evidence.read(entry(1))  # only true is true
    assert Evidence.read(entry(1, prior=True)) is None and Evidence.read(entry(1, study_uid="x/y")) is None
    with pytest.raises(InvalidFindings, match="prior's study_uid"):
        Evidence(1, f"{UID}.1", f"{UID}.2", f"{UID}.3", prior=True)


def test_a_draft_given_priors_but_silent_on_them_names_what_it_was_compared_with() -> None:
    from integration.findings import compared_with

    ct = PriorReference.of("1.2.3.4", "20240301", modality="CT", description="CT CHEST")
    cr = PriorReference.of("1.2.3.5", None, modality="CR")
    assert compared_with([ct, cr]) == "Compared with CT CHEST (CT) of 2024-03-01; CR."
    assert compared_with([]) == ""
    silent = Document(findings=(), priors=(ct,))
    assert silent.comparison_text == "Compared with CT CHEST (CT) of 2024-03-01."
    assert (
        Document(findings=(), priors=(ct,), comparison="Effusion unchanged.").comparison_text == "Effusion unchanged."
    )
    assert Document(findings=(), prior_note="No prior study available.").comparison_text == "No prior study available."


def test_a_finding_box_is_four_fractions_on_its_one_image_and_round_trips() -> None:
    boxed = Finding("Nodule.", (2,), box=(0.1, 0.2, 0.5, 0.6))
    assert boxed.as_json()["box"] == [0.1, 0.2, 0.5, 0.6] and Finding.read(boxed.as_json()) == boxed
    assert boxed.bare == Finding("Nodule.", (2,), box=(0.1, 0.2, 0.5, 0.6))
    for images, box in (((1, 2), (0.1, 0.2, 0.5, 0.6)), ((), (0.1, 0.2, 0.5, 0.6)), ((1,), (0.5, 0.2, 0.1, 0.6))):
        with pytest.raises(InvalidFindings, match="box"):
            Finding("Nodule.", images, box=box)  # type: ignore[arg-type]
    assert [valid_box(v) for v in ([0, 0, 1, 1], [0, 0, 1.5, 1], [0, 0, 1], "0 0 1 1", [0, 0, 0, 1])] == [
        (0.0, 0.0, 1.0, 1.0),
        None,
        None,
        None,
        None,
    ]
    # lenient reading leaves out a broken box, or one on a finding that does not cite exactly one image
    stored = {
        "findings": [{"text": "A.", "images": [1, 2], "box": [0, 0, 1, 1]}, {"text": "B.", "images": [1], "box": 7}]
    }
    assert [f.box for f in Document.read(stored).findings] == [None, None]
    # an edit keeps the box of a finding whose text and images it leaves unchanged, and only that
    edited = edited_findings([{"text": "Nodule.", "images": [2]}, {"text": "Nodule, 9 mm.", "images": [2]}])
    assert [f.box for f in kept_boxes(edited, (boxed,))] == [boxed.box, None]
    assert kept_boxes(edited_findings([{"text": "Nodule.", "images": [1]}]), (boxed,))[0].box is None
