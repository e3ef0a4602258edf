"""The prior study beside the current one on the study page: its images, its report, or why there is none.

A radiologist compares: the page shows each prior study the fetcher chose (:func:`store.priors.priors_view`)
in a viewer of its own next to the current study's, with the prior's report text (untrusted: the template
escapes it) and where that text came from.  When there is no prior the page says so in one line: none was
found, the search failed or is still running, or a chosen prior could not be fetched, with the reason that
was recorded.

* **Same window**: the prior's large view is rendered with the window of the current large view, and
  ``static/review.js`` keeps it so when another current image is shown.
* **Linked scrolling**: each viewer knows the slices of the series it shows (:attr:`PriorPane.stack`,
  instances by Instance Number).  Where both are volumes (more than one slice) the script scrolls them
  together by relative position along the stack; the page works without it (thumbnails are links).
* **Authorization**: priors are read through the current study, which the caller has authorized, and their
  images only when the prior's study row belongs to the same site as the current study (as the fetcher
  reserves it); the frame route then checks the user against that row again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.findings import clean_text
from integration.store.priors import PriorView, priors_view
from integration.store.tables import Instance, PriorSearchState, PriorState, Report, Series, Study
from integration.uids import is_valid_uid
from integration.web.pages.study_view import THUMBNAILS_PER_SERIES, Tile, evidence_entries

#: Where a prior's report text came from, as the page says it.
REPORT_SOURCES = {
    "signed": "our signed report",
    "sr": "structured report (SR) in the prior study",
    "pdf": "PDF report in the prior study (its text is not read)",
    "fhir": "FHIR DiagnosticReport",
}
#: The line shown instead of a prior, by the state of the study's search.
SEARCH_LINES = {
    None: "No prior study available: no search for priors was made for this study.",
    PriorSearchState.PENDING: "The search for prior studies has not started yet.",
    PriorSearchState.RUNNING: "The search for prior studies is still running.",
    PriorSearchState.DONE: "No prior study found.",
    PriorSearchState.FAILED: "Prior studies could not be searched",
}
#: Longest prior report text shown (the stored text is untrusted and may be long).
MAX_REPORT_CHARS = 20_000
#: Most slices a viewer's stack lists (the page carries their UIDs).
MAX_STACK = 2000


@dataclass(frozen=True)
class PriorTile(Tile):
    """A frame of a prior study; its page link opens it in the prior viewer of the current study's page."""

    current_uid: str = ""
    rank: int = 1

    def page_url(self, report_id: int | None) -> str:
        """The current study's page with this prior frame in the prior's large view."""
        params: dict[str, Any] = {"prior_image": self.sop_instance_uid, "prior_frame": self.frame}
        if report_id is not None:
            params = {"report": report_id, **params}
        return f"/studies/{self.current_uid}?{urlencode(params)}#prior-{self.rank}"


@dataclass(frozen=True)
class PriorPane:
    """One prior study as the page shows it.

    Attributes
    ----------
    study_uid : str
        The prior's Study Instance UID.
    rank : int
        1 for the most recent chosen prior.
    heading : str
        Modality, date and description (untrusted text, escaped by the template).
    source : str
        ``local`` or the archive's name.
    line : str or None
        Why its images are not shown (not fetched, being fetched, another site's), or None.
    report_text : str or None
        Its report, cleaned and cut (untrusted: shown as text).
    report_source : str or None
        Where the report came from, in words.
    model_tiles, tiles : list of PriorTile
        The frames the model saw, and the sampled frames of its series.
    selected : PriorTile or None
        The frame of the large view (in the current view's window).
    stack : tuple of str
        SOP Instance UIDs of the selected frame's series, by Instance Number (a volume when more than one).
    """

    study_uid: str
    rank: int
    heading: str
    source: str
    line: str | None
    report_text: str | None
    report_source: str | None
    model_tiles: list[PriorTile] = field(default_factory=list)
    tiles: list[PriorTile] = field(default_factory=list)
    selected: PriorTile | None = None
    stack: tuple[str, ...] = ()


@dataclass(frozen=True)
class PriorsPanel:
    """The priors of a study page: a pane per prior, and the line said when there is none to show."""

    panes: tuple[PriorPane, ...]
    line: str | None

    @property
    def model_tiles(self) -> list[PriorTile]:
        """The prior frames the model saw, all priors together (a finding may cite them)."""
        return [tile for pane in self.panes for tile in pane.model_tiles]


def _heading(prior: PriorView) -> str:
    day = prior.study_date or ""
    date = f"{day[:4]}-{day[4:6]}-{day[6:8]}" if len(day) == 8 else ""
    parts = [clean_text(part, 64, one_line=True) for part in (prior.modality, date, prior.description) if part]
    return " · ".join(part for part in parts if part) or "Prior study"


def _state_line(prior: PriorView) -> str | None:
    if prior.state is PriorState.UNAVAILABLE:
        reason = clean_text(prior.reason or "", 500, one_line=True) or "no reason was recorded"
        return f"Prior study not available: {reason}"
    if prior.state is not PriorState.READY:
        return "The prior study is still being retrieved."
    return None


def series_stack(session: Session, study_id: int, series_uid: str) -> tuple[str, ...]:
    """Return the SOP Instance UIDs of one series of a study, by Instance Number (then arrival).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study_id : int
        The study (already authorized).
    series_uid : str
        The series.

    Returns
    -------
    tuple of str
        At most :data:`MAX_STACK` UIDs.
    """
    return tuple(
        session.scalars(
            select(Instance.sop_instance_uid)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id, Series.series_uid == series_uid)
            .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.id)
            .limit(MAX_STACK)
        )
    )


def _even(count: int, most: int) -> set[int]:
    if count <= most:
        return set(range(count))
    return {round(i * (count - 1) / (most - 1)) for i in range(most)}


def _images(
    session: Session,
    current: Study,
    prior: PriorView,
    evidence: Sequence[Mapping[str, Any]],
    window: str,
    wanted: tuple[str, int] | None,
) -> tuple[list[PriorTile], list[PriorTile], PriorTile | None, tuple[str, ...]]:
    """The prior's model tiles, sampled strip, selected frame (in ``window``) and its series' stack."""
    assert prior.prior_study_id is not None
    chosen = {file.sop_instance_uid for file in prior.files}
    rows = session.execute(
        select(Series.series_uid, Series.series_number, Series.modality, Instance.sop_instance_uid)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == prior.prior_study_id)
        .order_by(Series.series_number, Series.id, Instance.instance_number.is_(None), Instance.instance_number)
    ).all()
    rows = [row for row in rows if row.sop_instance_uid in chosen]
    series_of = {row.sop_instance_uid: row.series_uid for row in rows}

    def tile(series_uid: str, sop: str, frame: int, win: str, label: str, images: tuple[int, ...]) -> PriorTile:
        return PriorTile(
            prior.prior_study_uid, series_uid, sop, frame, win, label, images, current.study_uid, prior.rank
        )

    mine = [e for e in evidence if e.get("prior") is True and e.get("study_uid") == prior.prior_study_uid]
    model = [
        tile(series, sop, frame, win, f"Prior image {number}", (number,))
        for number, series, sop, frame, win in sorted(evidence_entries(mine), key=lambda e: e[0])
        if sop in series_of
    ]
    seen = {(t.sop_instance_uid, t.frame): t.images for t in model}
    by_series: dict[str, list[Any]] = {}
    for row in rows:
        by_series.setdefault(row.series_uid, []).append(row)
    strip = []
    for series_rows in by_series.values():
        sampled = _even(len(series_rows), THUMBNAILS_PER_SERIES)
        for position, row in enumerate(series_rows):
            if position in sampled or (row.sop_instance_uid, 1) in seen:
                label = f"Prior {row.modality or ''} series {row.series_number or '?'}, image {position + 1}"
                images = seen.get((row.sop_instance_uid, 1), ())
                strip.append(tile(row.series_uid, row.sop_instance_uid, 1, "default", label, images))
    selected: PriorTile | None = None
    if wanted is not None and wanted[0] in series_of:
        sop, frame = wanted
        selected = tile(series_of[sop], sop, frame, window, f"Prior frame {frame}" if frame > 1 else "Prior image", ())
        selected = next((t for t in [*model, *strip] if (t.sop_instance_uid, t.frame) == wanted), selected)
    elif model:
        selected = model[0]
    elif strip:
        series_rows = next(iter(by_series.values()))
        middle = series_rows[len(series_rows) // 2].sop_instance_uid
        selected = next((t for t in strip if t.sop_instance_uid == middle), strip[0])
    if selected is None:
        return model, strip, None, ()
    selected = replace(selected, window=window)
    stack = tuple(uid for uid in series_stack(session, prior.prior_study_id, selected.series_uid) if uid in chosen)
    return model, strip, selected, stack


def prior_panel(
    session: Session,
    study: Study,
    report: Report | None,
    *,
    window: str = "default",
    prior_image: str | None = None,
    prior_frame: int | None = None,
) -> PriorsPanel:
    """Collect what the page shows of a study's priors.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        Open session.
    study : Study
        The current study (already authorized for the user).
    report : Report or None
        The report shown: its evidence marks the prior frames the model saw.
    window : str
        The current large view's window: the priors' large views use it too.
    prior_image, prior_frame : optional
        A prior frame asked for the large view (ignored unless it is a frame of a prior of this study).

    Returns
    -------
    PriorsPanel
        A pane per prior (by rank) and the line said when there is none to show.
    """
    view = priors_view(session, study.id)
    evidence = [e for e in (report.evidence if report is not None else []) if isinstance(e, Mapping)]
    wanted = (prior_image, prior_frame or 1) if prior_image is not None and is_valid_uid(prior_image) else None
    panes = []
    for prior in view.priors:
        line = _state_line(prior)
        images: tuple[list[PriorTile], list[PriorTile], PriorTile | None, tuple[str, ...]] = ([], [], None, ())
        if line is None and prior.prior_study_id is not None:
            row = session.get(Study, prior.prior_study_id)
            if row is None or row.site_id != study.site_id:
                line = "The prior study's images are held for another site and are not shown."
            else:
                images = _images(session, study, prior, evidence, window, wanted)
                line = None if images[2] is not None else "No images of the prior study are stored."
        text = clean_text(prior.report_text, MAX_REPORT_CHARS) if prior.report_text else None
        panes.append(
            PriorPane(
                study_uid=prior.prior_study_uid,
                rank=prior.rank,
                heading=_heading(prior),
                source=clean_text(prior.source, 64, one_line=True),
                line=line,
                report_text=text or None,
                report_source=REPORT_SOURCES.get(prior.report_source or "", prior.report_source),
                model_tiles=images[0],
                tiles=images[1],
                selected=images[2],
                stack=images[3],
            )
        )
    line = None
    if not panes:
        line = SEARCH_LINES[view.search_state]
        if view.search_state is PriorSearchState.FAILED:
            line += f": {clean_text(view.search_reason or 'no reason was recorded', 500, one_line=True)}"
        elif view.search_reason and view.search_state is PriorSearchState.DONE:
            line += f" ({clean_text(view.search_reason, 500, one_line=True)})"
    return PriorsPanel(tuple(panes), line)
