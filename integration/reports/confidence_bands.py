"""Acceptance of draft findings by confidence band: whether the model's score means anything at a hospital.

Each draft finding may carry a ``confidence`` (0..1, from the token log-probabilities of its text; the draft's
``confidence_method`` names how).  It is the model's confidence in its own wording, never a probability that
the finding is right; whether it tells anything about being right is what this module measures, from the
review outcomes that already exist (:class:`integration.store.tables.ReviewOutcome`, one per signed or
rejected revision, whose ``detail["findings"]`` says per draft finding whether it was ``accepted``,
``edited`` or ``rejected``; see :mod:`integration.reports.review_diff`).

Bands (the settings' ``confidence_low`` and ``confidence_high``, :func:`band_of`): ``low`` below
``confidence_low``, ``high`` at or above ``confidence_high``, ``medium`` between.

Per model id, model revision, prompt version and band: the draft findings with a score that were reviewed,
how many were accepted unedited, edited or rejected, and the acceptance rate (accepted / reviewed).

Rules of the count
------------------
* Only a report's **first** review outcome counts (the radiologist's review of the draft); an amendment
  later compares the same draft findings again and would count them twice.
* A rejected draft's findings count as rejected whatever its row says (as ``pacsvlm_review_findings``).
* Findings without a score (older drafts, servers without log-probabilities) are left out.
* Which draft finding an outcome entry means is its ``index`` in the draft's stored findings list (drafts are
  written through :meth:`integration.findings.Document.as_json`, so every stored entry is a valid finding).

One aggregate query, in SQL with each dialect's JSON functions (PostgreSQL ``json``, SQLite ``json_each``),
so a scrape of ``/metrics`` stays cheap; read-only (no transaction of its own: the caller's connection).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, text

from integration.store.tables import ReviewOutcome

#: The confidence bands, least confident first.
BANDS = ("low", "medium", "high")
#: What became of a reviewed draft finding.
FATES = ("accepted", "edited", "rejected")

# One row per reviewed draft finding with a score: model, revision, prompt, band, fate; grouped and counted.
_POSTGRESQL = """
WITH first_outcomes AS (
    SELECT o.model_id, o.model_revision, o.prompt_version, o.outcome, o.detail -> 'findings' AS entries,
           r.findings -> 'findings' AS drafted
    FROM review_outcomes o JOIN reports r ON r.id = o.report_id
    WHERE o.id = (SELECT min(f.id) FROM review_outcomes f WHERE f.report_id = o.report_id) {since}
), entries AS (
    SELECT model_id, model_revision, prompt_version,
           CASE WHEN outcome = 'rejected' THEN 'rejected' ELSE e.value ->> 'outcome' END AS fate,
           CASE WHEN json_typeof(e.value -> 'index') = 'number' AND (e.value ->> 'index') ~ '^[0-9]{{1,6}}$'
                THEN drafted -> ((e.value ->> 'index')::int) END AS finding
    FROM first_outcomes
    CROSS JOIN LATERAL json_array_elements(
        CASE WHEN json_typeof(entries) = 'array' THEN entries ELSE '[]'::json END) AS e(value)
), scored AS (
    SELECT model_id, model_revision, prompt_version, fate,
           CASE WHEN json_typeof(finding -> 'confidence') = 'number'
                THEN (finding ->> 'confidence')::float END AS score
    FROM entries
)
SELECT model_id, model_revision, prompt_version,
       CASE WHEN score < :low THEN 'low' WHEN score < :high THEN 'medium' ELSE 'high' END AS band,
       fate, count(*)
FROM scored
WHERE score IS NOT NULL AND fate IN ('accepted', 'edited', 'rejected')
GROUP BY 1, 2, 3, 4, 5
"""

_SQLITE = """
WITH first_outcomes AS (
    SELECT o.model_id, o.model_revision, o.prompt_version, o.outcome, o.detail AS detail, r.findings AS drafted
    FROM review_outcomes o JOIN reports r ON r.id = o.report_id
    WHERE o.id = (SELECT min(f.id) FROM review_outcomes f WHERE f.report_id = o.report_id) {since}
), entries AS (
    SELECT model_id, model_revision, prompt_version, drafted,
           CASE WHEN outcome = 'rejected' THEN 'rejected'
                WHEN e.type = 'object' THEN json_extract(e.value, '$.outcome') END AS fate,
           CASE WHEN e.type = 'object' AND json_type(e.value, '$.index') = 'integer'
                     AND json_extract(e.value, '$.index') >= 0
                THEN '$.findings[' || json_extract(e.value, '$.index') || '].confidence' END AS path
    FROM first_outcomes,
         json_each(CASE WHEN json_type(detail, '$.findings') = 'array'
                        THEN json_extract(detail, '$.findings') ELSE '[]' END) AS e
), scored AS (
    SELECT model_id, model_revision, prompt_version, fate,
           CASE WHEN path IS NOT NULL AND json_type(drafted, path) IN ('integer', 'real')
                THEN json_extract(drafted, path) END AS score
    FROM entries
)
SELECT model_id, model_revision, prompt_version,
       CASE WHEN score < :low THEN 'low' WHEN score < :high THEN 'medium' ELSE 'high' END AS band,
       fate, count(*)
FROM scored
WHERE score IS NOT NULL AND fate IN ('accepted', 'edited', 'rejected')
GROUP BY 1, 2, 3, 4, 5
"""


def band_of(score: float, low: float, high: float) -> str:
    """Return the band of a confidence score: ``low`` below ``low``, ``high`` at or above ``high``, else ``medium``.

    Parameters
    ----------
    score : float
        A finding's confidence, 0..1.
    low, high : float
        The thresholds (the settings' ``confidence_low`` and ``confidence_high``; ``low <= high``).

    Returns
    -------
    str
        One of :data:`BANDS`.
    """
    if score < low:
        return "low"
    return "high" if score >= high else "medium"


@dataclass(frozen=True)
class BandStats:
    """Reviewed draft findings with a score in one band, for one model revision and prompt version.

    Attributes
    ----------
    model_id, model_revision, prompt_version : str
        What drafted them.
    band : str
        One of :data:`BANDS`.
    accepted, edited, rejected : int
        Draft findings signed unedited, signed with other text, left out (or in a rejected draft).
    """

    model_id: str
    model_revision: str
    prompt_version: str
    band: str
    accepted: int = 0
    edited: int = 0
    rejected: int = 0

    @property
    def reviewed(self) -> int:
        """Draft findings of this band that were reviewed."""
        return self.accepted + self.edited + self.rejected

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted unedited / reviewed; None when none was reviewed."""
        return self.accepted / self.reviewed if self.reviewed else None


def acceptance_by_band(
    connection: Connection, low: float, high: float, *, since: datetime | None = None
) -> list[BandStats]:
    """Count reviewed draft findings with a score by model, revision, prompt version, band and fate.

    Parameters
    ----------
    connection : sqlalchemy.Connection
        An open connection (PostgreSQL or SQLite); only read.
    low, high : float
        The band thresholds (see :func:`band_of`).
    since : datetime, optional
        Count only first review outcomes recorded at or after this time (aware, UTC).

    Returns
    -------
    list of BandStats
        For each (model id, revision, prompt version) with a reviewed scored finding, one entry per band of
        :data:`BANDS` (zeros where none), sorted by model id, revision, prompt version, band.
    """
    query = _POSTGRESQL if connection.dialect.name == "postgresql" else _SQLITE
    statement = text(query.format(since="AND o.created_at >= :since" if since is not None else ""))
    if since is not None:  # bound as the column's type (UTC, as stored)
        statement = statement.bindparams(bindparam("since", since, type_=ReviewOutcome.__table__.c.created_at.type))
    rows = connection.execute(statement, {"low": low, "high": high}).all()
    return band_table((str(m), str(r), str(p), str(b), str(f), int(n)) for m, r, p, b, f, n in rows)


def band_table(rows: Iterable[tuple[str, str, str, str, str, int]]) -> list[BandStats]:
    """Fold ``(model, revision, prompt, band, fate, count)`` rows into :class:`BandStats`, every band listed."""
    counts: dict[tuple[str, str, str], dict[str, dict[str, int]]] = {}
    for model_id, revision, prompt, band, fate, count in rows:
        per_band = counts.setdefault((model_id, revision, prompt), {b: dict.fromkeys(FATES, 0) for b in BANDS})
        per_band[band][fate] += count
    return [
        BandStats(model_id, revision, prompt, band, *(per_band[band][fate] for fate in FATES))
        for (model_id, revision, prompt), per_band in sorted(counts.items())
        for band in BANDS
    ]
