"""The draft's safety net on the review page and in the review actions, in process (FastAPI's ``TestClient``, SQLite).

A draft recorded with per-finding confidence, consistency checks, critical matches and its decoding path (the
findings JSON the worker stores): the page shows each finding's confidence band (low marked in words, never
hidden), the checks beside their findings with a Dismiss button and number key, the decoding path and the
critical matches, all escaped; signing answers 409 naming how many checks are open and of which kinds until
each is dismissed (a review change, audited) or fixed (its finding edited or rejected; the impression for the
draft as a whole).  Drafts without checks sign as before (``test_routes_inprocess.py``).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from integration.config import Settings
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Report, ReviewChange
from integration.web.pages.draft_safety import confidence_band
from tests.reports.test_signing import DRAFT_FINDINGS
from tests.web.test_routes_inprocess import World, signed_in
from tests.web.test_routes_inprocess import world as world  # the fixture

HOSTILE = "<script>alert(1)</script>"
CHECKS = [
    {"finding": 1, "kind": "laterality", "message": "The finding says right; the image header says left (L)."},
    {"finding": 2, "kind": "contrast", "message": f"Contrast mentioned, none recorded {HOSTILE}"},
    {"finding": 0, "kind": "sex", "message": "The impression names anatomy of the other sex."},
]
SAFETY = {
    "checks": CHECKS,
    "critical": [
        {
            "finding": 1,
            "code": "pneumothorax",
            "label": "Pneumothorax",
            "source": "text",
            "phrase": "possible <b>PTX</b>",
        }
    ],
    "decoding": "grammar",
    "confidence_method": "geometric mean of the token probabilities of the finding's text",
}


def with_safety_net(settings: Settings, report_id: int, scores: list[float | None]) -> None:
    """Store the draft's findings JSON as the worker does once the safety net runs."""
    findings: list[dict[str, Any]] = [
        {**finding, **({"confidence": score} if score is not None else {})}
        for finding, score in zip(DRAFT_FINDINGS["findings"], scores, strict=True)
    ]
    with session_scope(settings.database_url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.findings = {**DRAFT_FINDINGS, "findings": findings, **SAFETY}


def test_confidence_bands_follow_the_settings() -> None:
    settings = Settings(confidence_low=0.5, confidence_high=0.8)
    assert [confidence_band(score, settings) for score in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0)] == [
        *("low", "low", "medium", "medium", "high", "high")
    ]


def test_checks_are_dismissed_or_fixed_before_signing(world: World) -> None:
    with_safety_net(world.settings, world.north_report, [0.31, 0.92])
    rad = signed_in(world, "north_rad")
    api, form = f"/api/reports/{world.north_report}", f"/studies/{world.north_uid}/reports/{world.north_report}"
    page = rad.get(f"/studies/{world.north_uid}").text

    # Confidence: the band in words and the score; low marked by class and words; what it means, said.
    low = re.search(r'<span class="confidence confidence-low"[^>]*>([^<]*)</span>', page)
    assert low and low.group(1) == "low confidence · 0.31"
    assert "high confidence · 0.92" in page and 'class="finding decision-pending confidence-low' in page
    assert "not the probability that the finding is right" in page
    assert "geometric mean of the token probabilities" in page
    # The decoding path and the critical match in the draft's header; everything escaped.
    assert "constrained to the report schema (grammar-constrained decoding in process)" in page
    assert "<strong>Pneumothorax</strong>" in page and "possible &lt;b&gt;PTX&lt;/b&gt;" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The checks: the draft's at the top (number 1), then beside findings 1 and 2, each with its key.
    assert page.index('id="check-0-sex"') < page.index('id="finding-0"') < page.index('id="check-1-laterality"')
    assert page.index('id="check-1-laterality"') < page.index('id="finding-1"') < page.index('id="check-2-contrast"')
    keys = re.findall(r'value="dismiss:([0-9a-z:]+)" class="dismiss" data-dismiss-key="(\d)"', page)
    assert keys == [("0:sex", "1"), ("1:laterality", "2"), ("2:contrast", "3")]
    assert "Signing waits: 3 consistency checks are open" in page

    # Every finding reviewed, signing is still refused: 409 naming how many checks and which kinds.
    for index, seq in ((0, 0), (1, 1)):
        assert rad.post(api + "/changes", json={"action": "accept", "finding": index, "expected_seq": seq}).is_success
    refused = rad.post(api + "/sign", json={"expected_seq": 2})
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"].startswith(
        "3 consistency checks are open (laterality, contrast, sex-specific anatomy): dismiss each or fix its finding"
    )

    # A dismissal is a review change (action dismiss, after = the check's key) and an audited one.
    dismissed = rad.post(api + "/changes", json={"action": "dismiss", "text": "1:laterality", "expected_seq": 2})
    assert dismissed.status_code == 200, dismissed.text
    view = rad.get(api).json()["working_copy"]  # the JSON API shows the checks' states and the scores
    assert [(c["key"], c["state"]) for c in view["checks"]] == [
        *(("1:laterality", "dismissed"), ("2:contrast", "open"), ("0:sex", "open"))
    ]
    assert [finding["confidence"] for finding in view["findings"]] == [0.31, 0.92]
    for wrong in ("1:laterality", "3:sex", "nonsense"):
        answer = rad.post(api + "/changes", json={"action": "dismiss", "text": wrong})
        assert answer.status_code == 422, answer.text
    assert rad.post(api + "/changes", json={"action": "dismiss", "finding": 0, "text": "0:sex"}).status_code == 422

    # Fixing: an edit of finding 2 resolves its check; a reset opens it again; a rejection resolves it too.
    edited = rad.post(form + "/review", data={"do": "edit:1", "expected_seq": "3", "text-1": "Contrast given."})
    assert edited.status_code == 303, edited.text
    assert rad.post(api + "/changes", json={"action": "reset", "finding": 1, "expected_seq": 4}).is_success
    refused = rad.post(form + "/review", data={"do": "sign", "expected_seq": "5", "confirm_unreviewed": "1"})
    assert refused.status_code == 409 and "2 consistency checks are open (contrast, sex-specific anatomy)" in (
        refused.text
    )
    rejected = rad.post(form + "/review", data={"do": "reject:1", "expected_seq": "5"})
    assert rejected.status_code == 303
    refused = rad.post(form + "/review", data={"do": "sign", "expected_seq": "6"})
    assert refused.status_code == 409 and "1 consistency check is open (sex-specific anatomy)" in refused.text

    # The page's Dismiss button (the limitations typed meanwhile saved first); then signing succeeds.
    fields = {"do": "dismiss:0:sex", "expected_seq": "6", "limitations": "Single phase."}
    dismissed = rad.post(form + "/review", data=fields)
    assert dismissed.status_code == 303, dismissed.text
    assert dismissed.headers["location"].endswith("done=dismiss#draft-checks")
    page = rad.get(f"/studies/{world.north_uid}?done=dismiss").text
    assert "Check dismissed." in page and "Signing waits" not in page and "data-dismiss-key" not in page
    states = re.findall(r'<li class="check check-(\w+)" id="check-([0-9a-z-]+)"', page)
    assert states == [("dismissed", "0-sex"), ("dismissed", "1-laterality"), ("fixed", "2-contrast")]
    signed = rad.post(api + "/sign", json={"expected_seq": 8})
    assert signed.status_code == 200, signed.text

    with session_scope(world.settings.database_url) as session:
        changes = session.execute(
            select(ReviewChange.seq, ReviewChange.action, ReviewChange.finding, ReviewChange.before, ReviewChange.after)
            .where(ReviewChange.report_id == world.north_report, ReviewChange.action == "dismiss")
            .order_by(ReviewChange.seq)
        ).all()
        events = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "review.change").order_by(AuditEvent.id)
        ).all()
    assert [tuple(row) for row in changes] == [
        (3, "dismiss", None, None, "1:laterality"),
        (8, "dismiss", None, None, "0:sex"),
    ]
    assert [event for event in events if event["action"] == "dismiss"] == [
        {"action": "dismiss", "finding": None, "seq": 3, "check": "1:laterality"},
        {"action": "dismiss", "finding": None, "seq": 8, "check": "0:sex"},
    ]


def test_findings_without_a_score_or_checks_say_nothing(world: World) -> None:
    with_safety_net(world.settings, world.north_report, [None, 0.65])
    rad = signed_in(world, "north_rad")
    page = rad.get(f"/studies/{world.north_uid}").text
    assert page.count('class="confidence confidence-') == 1 and "medium confidence · 0.65" in page
    assert "low confidence" not in page
    # An old draft (the other site's, seen by an administrator): no confidence, checks or decoding shown.
    old = signed_in(world, "boss").get(f"/studies/{world.south_uid}").text
    assert "confidence-note" not in old and "draft-checks" not in old and 'id="decoding"' not in old
    assert "Signing waits" not in old
