"""What the study page shows of a draft's safety net: confidence per finding, consistency checks, critical matches.

* Confidence: each draft finding's score (``Finding.confidence``, from the token log-probabilities of its
  text) in a band of the settings: ``low`` below ``confidence_low``, ``high`` at or above ``confidence_high``,
  ``medium`` between.  Low scores are marked (a class and the words "low confidence"), never hidden.  The
  page says what the score is: the model's confidence in its own wording (the document's
  ``confidence_method``), not the probability that the finding is right.  Findings without a score say
  nothing.
* Consistency checks (``Document.checks``): shown beside the finding they concern (finding 0, the draft as a
  whole, and any finding number the working copy does not have: at the top), each ``open``, ``fixed`` (its
  finding edited or rejected) or ``dismissed`` (see :meth:`integration.store.reviews.WorkingCopy.check_state`).
  The first nine open checks get the number key that dismisses them (``static/review.js``).
* The decoding path (``Document.decoding``) and the critical matches (``Document.critical``) for the draft's
  header area.

Everything here is model output or derived from it: the templates autoescape it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from integration.config import Settings
from integration.draft_checks import CriticalMatch
from integration.findings import Document
from integration.reports.readiness import CHECK_KIND_NAMES, open_checks_refusal
from integration.store.reviews import WorkingCopy
from integration.store.tables import Report

#: How the page names the decoding path of a draft (``models.backend.Decoding``'s values).
DECODING_NAMES = {
    "grammar": "constrained to the report schema (grammar-constrained decoding in process)",
    "response_format": "constrained to the report schema by the model server (JSON schema response format)",
    "free": "free text, parsed leniently (not constrained to the report schema)",
    "free-fallback": "free text: the model server refused the report schema, so the answer was parsed leniently",
}
#: Most open checks that get a number key (1 to 9).
SHORTCUT_KEYS = 9
#: What a confidence score is, and what it is not (shown beside every score and once above the findings).
CONFIDENCE_MEANING = (
    "the model's confidence in its own wording of the finding, not the probability that the finding is right"
)


@dataclass(frozen=True)
class Confidence:
    """A finding's confidence score and its band (``low``, ``medium``, ``high``)."""

    score: float
    band: str

    @property
    def words(self) -> str:
        """``low confidence``, ``medium confidence`` or ``high confidence``."""
        return f"{self.band} confidence"

    @property
    def shown(self) -> str:
        """The score with two decimals (a score, not a percentage: it is no probability of being right)."""
        return f"{self.score:.2f}"


def confidence_band(score: float, settings: Settings) -> str:
    """Return a score's band: ``low`` below ``confidence_low``, ``high`` from ``confidence_high``, else ``medium``."""
    if score < settings.confidence_low:
        return "low"
    return "high" if score >= settings.confidence_high else "medium"


@dataclass(frozen=True)
class CheckView:
    """A consistency check as the page shows it.

    Attributes
    ----------
    key : str
        ``<finding>:<kind>``, what a dismissal names.
    finding : int
        1-based finding number (0: the draft as a whole).
    kind, kind_name : str
        The kind and how the page names it.
    message : str
        What contradicts what (no patient data; escaped where shown).
    state : str
        ``open``, ``fixed`` or ``dismissed``.
    shortcut : int or None
        The number key that dismisses it (open checks only, the first nine).
    """

    key: str
    finding: int
    kind: str
    kind_name: str
    message: str
    state: str
    shortcut: int | None = None

    @property
    def dom_id(self) -> str:
        """The element id of the check on the page (``check-2-laterality``)."""
        return f"check-{self.finding}-{self.kind}"


@dataclass
class DraftSafety:
    """What the page shows of a draft's safety net.

    Attributes
    ----------
    checks : dict of int to list of CheckView
        By working finding index; ``-1`` for the draft as a whole (shown at the top).
    open_checks : int
        How many are neither dismissed nor fixed.
    refusal : str or None
        Why signing waits for the checks (None when none is open).
    confidence : dict of int to Confidence
        By working finding index (draft findings with a score only).
    confidence_method : str
        How the scores were computed ('' when not recorded).
    decoding : str
        The decoding path as recorded ('' for older drafts); ``decoding_name`` says it in words.
    critical : list of CriticalMatch
        The findings that matched a critical result category.
    low, high : float
        The bands' bounds (settings ``confidence_low``, ``confidence_high``).
    """

    checks: dict[int, list[CheckView]] = field(default_factory=dict)
    open_checks: int = 0
    refusal: str | None = None
    confidence: dict[int, Confidence] = field(default_factory=dict)
    confidence_method: str = ""
    decoding: str = ""
    critical: list[CriticalMatch] = field(default_factory=list)
    low: float = 0.5
    high: float = 0.8
    meaning: str = CONFIDENCE_MEANING

    @property
    def decoding_name(self) -> str:
        """The decoding path in words."""
        return DECODING_NAMES.get(self.decoding, self.decoding)

    @property
    def top_checks(self) -> list[CheckView]:
        """The checks of the draft as a whole."""
        return self.checks.get(-1, [])

    def checks_of(self, index: int) -> list[CheckView]:
        """The checks of the working finding ``index``."""
        return self.checks.get(index, [])

    def confidence_of(self, index: int) -> Confidence | None:
        """The confidence of the working finding ``index`` (None without a score)."""
        return self.confidence.get(index)


def draft_safety(settings: Settings, report: Report | None, copy: WorkingCopy | None) -> DraftSafety:
    """Collect what the page shows of a report's checks, confidence scores, decoding path and critical matches.

    Parameters
    ----------
    settings : Settings
        The confidence bands.
    report : Report or None
        The report shown.
    copy : WorkingCopy or None
        Its working copy (the checks, their states and the findings' scores).

    Returns
    -------
    DraftSafety
        Empty for no report (and nothing but what is recorded for older drafts).
    """
    if report is None or copy is None:
        return DraftSafety()
    document = Document.read(report.findings)
    drafted = sum(1 for finding in copy.findings if finding.draft_text is not None)
    checks: dict[int, list[CheckView]] = {}
    ordered = sorted(copy.checks, key=lambda check: check.finding if 0 < check.finding <= drafted else 0)
    number = 0
    for check in ordered:
        state = copy.check_state(check)
        shortcut = None
        if state == "open" and number < SHORTCUT_KEYS:
            number += 1
            shortcut = number
        index = check.finding - 1 if 0 < check.finding <= drafted else -1
        kind_name = CHECK_KIND_NAMES.get(check.kind, check.kind)
        view = CheckView(check.key, check.finding, check.kind, kind_name, check.message, state, shortcut)
        checks.setdefault(index, []).append(view)
    confidence = {
        finding.index: Confidence(finding.confidence, confidence_band(finding.confidence, settings))
        for finding in copy.findings
        if finding.confidence is not None
    }
    return DraftSafety(
        checks=checks,
        open_checks=len(copy.open_checks),
        refusal=open_checks_refusal(copy),
        confidence=confidence,
        confidence_method=document.confidence_method,
        decoding=document.decoding,
        critical=list(document.critical),
        low=settings.confidence_low,
        high=settings.confidence_high,
    )
