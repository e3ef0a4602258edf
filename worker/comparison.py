"""What a draft is compared with: the prior studies found for it, as prompt text, images and references.

A radiologist reads a study against the patient's previous one; so does the model.  The listener's prior
fetcher (:mod:`integration.priors.fetcher`) finds and retrieves priors while the current study arrives,
and records them (:mod:`integration.store.priors`); this module turns that record into what one draft
needs: a :class:`~models.prompts.PriorContext` per prior (when, what, its report), the prior's images
(chosen with the same routing rule as the current study, labelled as prior and given first), the
:class:`~integration.findings.PriorReference` list the findings document, the SR and the review page name,
and the one line that says why there is no prior when there is none.

For a model server outside the trust boundary the rules of :mod:`worker.outbound` apply: the prior is
placed in time by days, not by date; its description is not sent; its report text is de-identified; the
patient's age goes as a band and the sex not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from integration.findings import InvalidFindings, PriorReference
from integration.imaging.routing import RoutingRule
from integration.imaging.selection import ModelImage, NoImages, evidence_entries, prepare_study
from integration.store.priors import PriorsView, PriorView
from integration.store.tables import PriorSearchState, PriorState
from models.prompts import PatientContext, PriorContext, age_in_years, age_text, prior_when, sex_text
from worker.outbound import deidentify_text, identifying_pixels

#: What may leave of a prior's images (``OutboundRelease.screen_images``): the burned-in text check.
Screen = Callable[[Sequence[ModelImage]], list[ModelImage]]

log = logging.getLogger(__name__)

#: The draft's line when the search found no prior (the SR and the page say the same).
NO_PRIOR = "No prior study available."
#: Opening of the line when a prior exists or may exist but is not there in time.
NOT_AVAILABLE = "Prior study not available"
#: Header attributes holding person names that a de-identified prior report must not carry.
NAME_KEYWORDS = ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy")


@dataclass(frozen=True)
class CurrentHeader:
    """What the comparison needs of the current study's header: its date, the patient and the names to remove.

    Attributes
    ----------
    study_date : str or None
        ``YYYYMMDD``.
    age_years : int or None
        From Patient's Age, else from the birth date and the study date.
    sex : str or None
        ``male``, ``female``, ``other``.
    names : tuple of str
        Person names in the header (patient, physicians): removed from prior report text that leaves the
        trust boundary.
    """

    study_date: str | None = None
    age_years: int | None = None
    sex: str | None = None
    names: tuple[str, ...] = ()

    def patient(self, deidentified: bool) -> PatientContext | None:
        """The patient as the model is told: age and sex, or for an untrusted server an age band only."""
        age = age_text(self.age_years, band=deidentified)
        sex = None if deidentified else self.sex
        return PatientContext(age=age, sex=sex) if age or sex else None


@dataclass
class Comparison:
    """The priors of one draft, ready for the prompt, the evidence and the findings document.

    Attributes
    ----------
    contexts : list of PriorContext
        One per prior given to the model, most recent first.
    references : list of PriorReference
        The same priors, as the findings document names them.
    images : list of ModelImage
        The prior images, in the order given (before the current study's).
    evidence : list of dict
        The draft's evidence entries of those images (numbers 1..len(images), ``prior`` true).
    note : str
        Why there is no prior ('' when one is given).
    timings : dict of str to float
        ``priors`` (count) and ``prior_images``, for the draft's timings.
    """

    contexts: list[PriorContext] = field(default_factory=list)
    references: list[PriorReference] = field(default_factory=list)
    images: list[ModelImage] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    note: str = NO_PRIOR
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The prior images' labels, in order."""
        return [image.label for image in self.images]


def read_current_header(path: Path) -> CurrentHeader:
    """Read the study date, the patient's age and sex and the person names from one instance of the study.

    A file that cannot be read gives an empty header (the draft goes on without them).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        log.warning("the current study's header could not be read for the comparison")
        return CurrentHeader()
    study_date = _date_text(ds.get("StudyDate"))
    age = age_in_years(str(ds.get("PatientAge") or ""), _date_text(ds.get("PatientBirthDate")), study_date)
    sex = sex_text(str(ds.get("PatientSex") or ""))
    names = tuple(str(value) for keyword in NAME_KEYWORDS for value in _values(ds.get(keyword)) if str(value).strip())
    return CurrentHeader(study_date, age, sex, names)


def build_comparison(
    view: PriorsView | None,
    *,
    instance_root: Path,
    current: CurrentHeader,
    rule: RoutingRule,
    rules: Sequence[RoutingRule],
    image_budget: int,
    image_size: int | None,
    deidentified: bool,
    screen: Screen | None = None,
) -> Comparison:
    """Turn the recorded priors of a study into what its draft is given.

    Parameters
    ----------
    view : PriorsView or None
        The study's prior search and priors (None: no search was made).
    instance_root : pathlib.Path
        Root of the instance store.
    current : CurrentHeader
        The current study's date, patient and names.
    rule : RoutingRule
        The current study's routing rule: its ``priors`` policy says how many prior images; the prior's
        images are chosen with it first, then with ``rules``.
    image_budget : int
        Prior images this draft may carry in all (0: the report text only).
    deidentified : bool
        The model server is outside the trust boundary: a prior's instances whose header says its pixels
        identify the patient are left out, like the current study's (:mod:`worker.outbound`).
    screen : callable, optional
        The burned-in text check of the images that may leave (``OutboundRelease.screen_images``); None: none.
    """
    comparison = Comparison(note=_note(view))
    ready = [prior for prior in (view.priors if view is not None else ()) if prior.state is PriorState.READY]
    ready.sort(key=lambda prior: prior.rank)
    if not ready:
        comparison.timings = {"priors": 0.0, "prior_images": 0.0}
        return comparison
    comparison.note = ""
    per_prior = image_budget // len(ready) if image_budget > 0 else 0
    for prior in ready:
        images = (
            _prior_images(prior, instance_root, (rule, *rules), per_prior, image_size, deidentified, screen)
            if per_prior
            else []
        )
        first = len(comparison.images) + 1
        comparison.images.extend(images)
        comparison.evidence.extend(evidence_entries(images, first, prior.prior_study_uid))
        names = current.names + prior_header_names(prior, instance_root) if deidentified else current.names
        comparison.contexts.append(_context(prior, current, len(images), deidentified, names))
        reference = _reference(prior)
        if reference is not None:
            comparison.references.append(reference)
    comparison.timings = {"priors": float(len(ready)), "prior_images": float(len(comparison.images))}
    return comparison


def prior_image_budget(rule: RoutingRule, limit: int) -> int:
    """Prior images a draft may carry: the rule's ``priors.max_images``, else half of ``limit`` (none below 2).

    The current study keeps at least half of the budget: its images are what is being reported.
    """
    if rule.priors.count == 0 or limit < 2:
        return 0
    wanted = rule.priors.max_images if rule.priors.max_images is not None else limit // 2
    return max(0, min(wanted, limit // 2))


def _note(view: PriorsView | None) -> str:
    """What the draft says when it has no prior, from the search's state."""
    if view is None or view.search_state is None:
        return NO_PRIOR
    if view.search_state in (PriorSearchState.PENDING, PriorSearchState.RUNNING):
        return f"{NOT_AVAILABLE}: the prior search did not finish before the draft was made."
    if view.search_state is PriorSearchState.FAILED:
        return f"{NOT_AVAILABLE}: {view.search_reason or 'the prior search failed'}."
    unavailable = [prior for prior in view.priors if prior.state is PriorState.UNAVAILABLE]
    if unavailable:
        return f"{NOT_AVAILABLE}: {unavailable[0].reason or 'it could not be retrieved'}."
    pending = [prior for prior in view.priors if prior.state in (PriorState.FOUND, PriorState.FETCHING)]
    if pending:
        return f"{NOT_AVAILABLE}: it was still being retrieved when the draft was made."
    return NO_PRIOR


def _prior_images(
    prior: PriorView,
    root: Path,
    rules: Sequence[RoutingRule],
    budget: int,
    image_size: int | None,
    deidentified: bool = False,
    screen: Screen | None = None,
) -> list[ModelImage]:
    """The prior's images chosen like the current study's and screened like them, relabelled as prior (maybe none)."""
    paths = [root / f.storage_path for f in prior.files]
    if deidentified:  # what the current study's release withholds, a prior's withholds too
        paths = [path for path in paths if not identifying_pixels(path)]
    if not paths:
        return []
    try:
        prepared = prepare_study(paths, rules=rules, max_images=budget, image_size=image_size)
    except NoImages as exc:
        log.info("prior study %s gives no image for the model: %s", prior.prior_study_uid, exc)
        return []
    images = screen(prepared.images) if screen is not None else prepared.images
    return [ModelImage(image.pixels, image.evidence, image.window, f"prior study, {image.label}") for image in images]


def prior_header_names(prior: PriorView, root: Path) -> tuple[str, ...]:
    """Person names in the prior's own headers: one instance of each of its series, and its SR's observers.

    A prior's report names the physicians of the prior study (its reading or referring physician, the SR's
    verifying observer and person items), who need not be those of the current study; the de-identification
    of the report for an untrusted server removes both.  A file that cannot be read adds nothing.
    """
    names: list[str] = []
    seen: set[str] = set()
    for instance in prior.files:
        if instance.series_uid in seen:
            continue
        seen.add(instance.series_uid)
        try:
            ds = pydicom.dcmread(root / instance.storage_path, stop_before_pixels=True, force=True)
        except Exception:
            log.info("a header of prior study %s could not be read for its names", prior.prior_study_uid)
            continue
        names.extend(str(value) for keyword in NAME_KEYWORDS for value in _values(ds.get(keyword)))
        names.extend(_sr_person_names(ds))
    return tuple(dict.fromkeys(name for name in names if name.strip()))


def _sr_person_names(ds: Any, depth: int = 0) -> list[str]:
    """Verifying observers, author observers and PNAME content items of an SR (nested content included)."""
    found: list[str] = []
    for item in ds.get("VerifyingObserverSequence") or ():
        found.extend(str(value) for value in _values(item.get("VerifyingObserverName")))
    for item in ds.get("ContentSequence") or () if depth < 32 else ():
        if str(item.get("ValueType", "")) == "PNAME":
            found.extend(str(value) for value in _values(item.get("PersonName")))
        found.extend(_sr_person_names(item, depth + 1))
    return found


def _context(
    prior: PriorView, current: CurrentHeader, images: int, deidentified: bool, names: Sequence[str] = ()
) -> PriorContext:
    """The prior as the model is told: by date, or for an untrusted server by days and without description.

    ``names`` are removed from the report for an untrusted server (the current study's and the prior's).
    """
    report = prior.report_text
    when = prior_when(prior.study_date, current.study_date, exact=not deidentified)
    if deidentified:
        report = deidentify_text(report, names or current.names) if report else None
        return PriorContext(
            when=when, modality=prior.modality, report=report, report_source=prior.report_source, images=images
        )
    return PriorContext(
        when=when,
        modality=prior.modality,
        description=prior.description,
        report=report,
        report_source=prior.report_source,
        images=images,
    )


def _reference(prior: PriorView) -> PriorReference | None:
    """The prior as the findings document names it (left out, with a log line, when its record is not valid)."""
    try:
        return PriorReference.of(
            prior.prior_study_uid,
            prior.study_date,
            modality=prior.modality,
            description=prior.description,
            accession=prior.accession,
            report_source=prior.report_source,
        )
    except InvalidFindings as exc:
        log.warning("prior study %s not named in the draft: %s", prior.prior_study_uid, exc)
        return None


def _values(element: Any) -> list[Any]:
    if element is None:
        return []
    if isinstance(element, (list, tuple, pydicom.multival.MultiValue)):
        return list(element)
    return [element]


def _date_text(value: Any) -> str | None:
    text = str(value or "").strip()
    return text if len(text) == 8 and text.isdigit() else None
