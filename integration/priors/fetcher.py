"""The prior fetcher: finds a new study's priors and brings them in while the study is still arriving.

A study's prior search is opened (pending) by the transaction that stores its first instance, and the
intake wakes the fetcher at once (``on_new_study``), so the query to the archives starts with the first
instance -- prefetch: the prior is usually on disk before the study is stable.  The fetcher also polls every
``assembly_interval``, which picks up searches opened by another process (STOW-RS, the API) and searches
whose fetcher died (their lease runs out).

For each search: the current study's attributes come from its first stored instance's header (the
study's worklist columns are filled only once it is stable); its routing rule gives the prior policy;
candidates come from our own store (always) and each configured archive (queried by Patient ID only);
:func:`~integration.priors.matching.choose_priors` picks the priors.  A prior we hold is used as it is; any
other is reserved as a study of role ``prior`` and only the series the rule would select (plus its SR
reports) are retrieved, through the one intake (``Origin.role == "prior"``: stored durably like any other
instance, never queued).  Every prior and the search itself are recorded with their outcome and reason.

Transactions: each store write is its own short ``session_scope`` (docs/architecture.md); nothing is held
open across a network call.  The fetcher never holds a study's draft back for long: the store lets a stable
study's job go ahead ``prior_wait_seconds`` after it became stable whatever the search's state, and priors
not retrieved by then are recorded as unavailable with the reason.

Logs name study UIDs and source names, never patient data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from integration.config import Settings
from integration.imaging.routing import DEFAULT_RULES, RoutingRule, first_rule_accepting
from integration.intake.assembly import StudyAssembler
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin, StoreOutcome
from integration.live_config import live_settings
from integration.priors.archive import ArchiveError, PriorArchive, StudyMatch, open_archive
from integration.priors.matching import (
    Candidate,
    CurrentStudy,
    SeriesChoice,
    choose_prior_series,
    choose_priors,
    is_local,
    prior_series_rule,
)
from integration.priors.reports import PriorReport, prior_report
from integration.store.priors import (
    LocalStudy,
    claim_searches,
    finish_search,
    local_candidates,
    prior_files,
    record_prior,
    reserve_prior_study,
    signed_report_text,
    update_prior,
)
from integration.store.session import session_scope
from integration.store.tables import Instance, PriorSearchState, PriorState, Series, Study, utcnow

log = logging.getLogger(__name__)

#: Searches worked on at once (one slow archive does not hold every other study's search).
WORKERS = 2
#: A running search whose fetcher has not finished it after this long is claimed again.
MIN_LEASE_SECONDS = 300.0


class NothingToSearch(Exception):
    """A search ends before any source is asked (no readable instance, no rule); the message is its reason."""


@dataclass
class _Search:
    """What one search has found so far (for its recorded reason)."""

    current: CurrentStudy
    rule: RoutingRule
    started: float
    archives: dict[str, PriorArchive] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    chosen: list[Candidate] = field(default_factory=list)


class PriorFetcher:
    """Background prior searches of the studies we receive.

    Parameters
    ----------
    settings : Settings
        Database, instance root, prior sources, ``prior_wait_seconds``, FHIR server, routing rules.
    intake : InstanceIntake
        The intake retrieved instances are stored through (the listener's).
    workers : int
        Searches worked on at once.
    """

    @property
    def rules(self) -> tuple[RoutingRule, ...]:
        """The routing rules in force (their prior policies say what to fetch)."""
        return tuple(live_settings(self.settings).routing_rules or DEFAULT_RULES)

    def __init__(self, settings: Settings, intake: InstanceIntake, *, workers: int = WORKERS) -> None:
        self.settings = settings
        self.intake = intake
        self.workers = workers
        self.lease_seconds = max(MIN_LEASE_SECONDS, 2 * settings.prior_wait_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._free = threading.Semaphore(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def attach(cls, settings: Settings, intake: InstanceIntake, assembler: StudyAssembler | None) -> PriorFetcher:
        """Build the fetcher of a listener: the intake's new studies wake it, stable studies wait for it.

        A study's first stored instance wakes the fetcher (prefetch), and the assembler holds a stable study's
        job until its prior search ends or ``prior_wait_seconds`` pass.  Start it after the listener.
        """
        fetcher = cls(settings, intake)
        intake.on_new_study = fetcher.wake
        if assembler is not None:
            assembler.prior_wait_seconds = settings.prior_wait_seconds
        return fetcher

    def start(self) -> None:
        """Start the claiming loop and its worker threads."""
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="prior-fetch")
        self._thread = threading.Thread(target=self._loop, name="prior-fetcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming, and wait for the searches in progress (an archive's timeout bounds them)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def wake(self, study_id: int | None = None) -> None:
        """Look for new searches now (the intake's ``on_new_study``: a study's first instance was stored)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.assembly_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.claim_and_start()
            except SQLAlchemyError as exc:
                log.warning("prior searches not claimed (database): %s", type(exc).__name__)
            except Exception:
                log.exception("prior searches not claimed")

    def claim_and_start(self) -> int:
        """Claim as many searches as there are free workers and start them; return how many."""
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        if not free:
            return 0
        try:
            with session_scope(self.settings.database_url) as session:
                study_ids = claim_searches(session, utcnow(), free, self.lease_seconds)
        except BaseException:
            for _ in range(free):
                self._free.release()
            raise
        for _ in range(free - len(study_ids)):
            self._free.release()
        assert self._pool is not None
        for study_id in study_ids:
            self._pool.submit(self._run, study_id)
        return len(study_ids)

    def _run(self, study_id: int) -> None:
        try:
            self.search(study_id)
        finally:
            self._free.release()
            self._wake.set()  # the next pending search may go now

    def search(self, study_id: int) -> None:
        """Search one claimed study's priors, fetch them and record everything; never raises for an archive."""
        url = self.settings.database_url
        started = time.monotonic()
        state, reason = PriorSearchState.DONE, None
        search: _Search | None = None
        try:
            search = self._begin(study_id, started)
            reason = self._work(search)
        except NothingToSearch as exc:
            state, reason = PriorSearchState.DONE, str(exc)
        except (ArchiveError, OSError) as exc:
            state, reason = PriorSearchState.FAILED, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # our own bug: recorded, and the study's draft goes ahead
            log.exception("prior search of study %d failed", study_id)
            state, reason = PriorSearchState.FAILED, f"internal error ({type(exc).__name__})"
        finally:
            for archive in search.archives.values() if search else ():
                _close(archive)
        if search is not None and state is PriorSearchState.DONE and reason and search.problems and not search.chosen:
            state = PriorSearchState.FAILED
        try:
            with session_scope(url) as session:
                finish_search(session, study_id, state, reason, utcnow())
        except SQLAlchemyError as exc:  # the lease runs out and another pass tries again
            log.warning("prior search of study %d not recorded (database): %s", study_id, type(exc).__name__)
            return
        uid = search.current.study_uid if search else f"#{study_id}"
        log.info(
            "prior search of study %s %s in %.1f s%s", uid, state.value, time.monotonic() - started,
            f": {reason}" if reason else "",
        )  # fmt: skip

    def _begin(self, study_id: int, started: float) -> _Search:
        """Read the current study's first instance and pick its routing rule."""
        with session_scope(self.settings.database_url) as session:
            row = session.execute(
                select(Study.study_uid, Study.site_id, Study.calling_ae, Study.role).where(Study.id == study_id)
            ).one_or_none()
            first = session.scalar(
                select(Instance.storage_path)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study_id)
                .order_by(Instance.id)
                .limit(1)
            )
        if row is None or first is None:
            raise NothingToSearch("the study has no stored instance")
        if row.role != "current":
            raise NothingToSearch("a prior study has no priors of its own")
        try:
            current = CurrentStudy.from_file(
                self.settings.instance_root / first, study_id=study_id, site_id=row.site_id, calling_ae=row.calling_ae
            )
        except Exception as exc:  # a damaged file: pydicom raises many kinds
            raise NothingToSearch(f"the first instance is unreadable ({type(exc).__name__})") from None
        parts = tuple(p for p in (current.body_part, current.region) if p)
        rule = first_rule_accepting(self.rules, [(current.modality, parts)], current.calling_ae)
        if rule is None:
            raise NothingToSearch("no routing rule accepts the study")
        return _Search(current, rule, started)

    def _work(self, search: _Search) -> str | None:
        """Query every source, choose the priors, record and fetch them; return the search's reason."""
        current, policy = search.current, search.rule.priors
        if policy.count == 0:
            return "the routing rule asks for no priors"
        if not current.patient_id:
            return "the study has no Patient ID"
        candidates: list[Candidate] = list(self._local(current))
        for source in self.settings.prior_sources:
            try:
                archive = search.archives[source.name] = open_archive(source, self.settings)
                candidates.extend(archive.find_studies(current.patient_id, current.issuer))
            except ArchiveError as exc:
                search.problems.append(f"{source.name}: {exc}")
                log.warning("prior query of study %s at %s failed: %s", current.study_uid, source.name, exc)
        chosen = choose_priors(current, candidates, policy, utcnow())
        search.chosen = chosen
        for rank, prior in enumerate(chosen, start=1):
            self._prior(search, rank, prior)
        if not chosen:
            return "; ".join(search.problems) or "no prior found"
        return "; ".join(search.problems) or None

    def _local(self, current: CurrentStudy) -> list[LocalStudy]:
        """The patient's studies we hold with instances (a reservation whose retrieval stored nothing is none)."""
        assert current.patient_id is not None
        with session_scope(self.settings.database_url) as session:
            held = local_candidates(session, current.patient_id, current.issuer, current.site_id, current.study_id)
        return [study for study in held if study.instances > 0]

    def _prior(self, search: _Search, rank: int, prior: Candidate) -> None:
        """Record one chosen prior, fetch it when we do not hold it, and record its outcome and report."""
        current, url = search.current, self.settings.database_url
        meta = {
            "study_date": prior.study_date,
            "modality": "\\".join(prior.modalities),
            "description": prior.description,
            "accession": getattr(prior, "accession", None),
        }
        if is_local(prior):
            assert isinstance(prior, LocalStudy)
            with session_scope(url) as session:
                prior_id = record_prior(
                    session, current.study_id or 0, prior.study_uid, source="local", now=utcnow(), rank=rank,
                    prior_study_id=prior.study_id, state=PriorState.FOUND, **meta,
                )  # fmt: skip
            report = self._report(prior.study_id, prior.study_uid, None, search)
            self._finish_prior(prior_id, PriorState.READY, None, report, instances=prior.instances)
            return
        assert isinstance(prior, StudyMatch)
        archive = search.archives[prior.source]
        source = next(s for s in self.settings.prior_sources if s.name == prior.source)
        calling_ae = (getattr(source, "ae_title", None) or source.name)[:16]
        with session_scope(url) as session:
            held_id, held = reserve_prior_study(
                session, prior.study_uid, current.site_id, calling_ae, utcnow(), patient_id=prior.patient_id,
                issuer=prior.issuer, study_date=prior.study_date, description=prior.description,
                accession=prior.accession,
            )  # fmt: skip
            prior_id = record_prior(
                session, current.study_id or 0, prior.study_uid, source=prior.source, now=utcnow(), rank=rank,
                prior_study_id=held_id, state=PriorState.FOUND if held else PriorState.FETCHING, **meta,
            )  # fmt: skip
        if held:  # the study is ours already (a study of another site's patient list, a parallel search)
            self._finish_prior(prior_id, PriorState.READY, None, self._report(held_id, prior.study_uid, None, search))
            return
        if time.monotonic() - search.started > self.settings.prior_wait_seconds:
            self._finish_prior(prior_id, PriorState.UNAVAILABLE, "not retrieved in time", None)
            return
        try:
            series = archive.find_series(prior.study_uid)
            rule = prior_series_rule(self.rules, search.rule, series, current.calling_ae)
            choice = choose_prior_series(series, rule, current.calling_ae)
            if not choice.series_uids:
                report = self._report(held_id, prior.study_uid, choice, search)
                self._finish_prior(prior_id, PriorState.UNAVAILABLE, "no series the routing rule selects", report)
                return
            with session_scope(url) as session:
                update_prior(session, prior_id, series_uids=list(choice.series_uids))
            result = archive.retrieve(prior.study_uid, choice.series_uids, self._sink(source, current))
        except ArchiveError as exc:
            search.problems.append(f"{prior.source}: {exc}")
            self._finish_prior(prior_id, PriorState.UNAVAILABLE, f"{prior.source}: {exc}", None)
            return
        report = self._report(held_id, prior.study_uid, choice, search)
        got = result.stored + result.duplicates
        problems = "; ".join(result.problems[:3])
        ready = got > 0 and (not choice.images or self._has_images(held_id, choice))
        state = PriorState.READY if ready else PriorState.UNAVAILABLE
        reason = None if ready else (problems or "the archive sent none of the chosen images")
        self._finish_prior(
            prior_id, state, reason, report, instances=got, bytes=result.bytes,
            seconds=round(result.seconds, 3),
        )  # fmt: skip
        log.info(
            "prior %s of study %s from %s: %d instances, %d bytes in %.1f s",
            prior.study_uid, current.study_uid, prior.source, got, result.bytes, result.seconds,
        )  # fmt: skip

    def _has_images(self, prior_study_id: int, choice: SeriesChoice) -> bool:
        with session_scope(self.settings.database_url) as session:
            return bool(prior_files(session, prior_study_id, choice.images))

    def _sink(self, source: Any, current: CurrentStudy) -> Callable[[bytes, str], StoreOutcome]:
        """Where a C-GET or WADO-RS retrieval's instances go: the intake, as priors of the current study's site."""
        dimse = getattr(source, "kind", "dimse") == "dimse"
        origin = Origin(
            calling_ae=((getattr(source, "ae_title", None) if dimse else None) or source.name)[:16],
            source="dicom" if dimse else "stow",
            site_id=current.site_id,
            stable_seconds=self.settings.stable_seconds,
            any_site=True,
            role="prior",
        )

        def sink(data: bytes, transfer_syntax_uid: str) -> StoreOutcome:
            return self.intake.store(data, transfer_syntax_uid, origin)

        return sink

    def _report(self, prior_study_id: int, study_uid: str, choice: SeriesChoice | None, search: _Search) -> PriorReport:
        """The prior's report: our signed one, an SR we retrieved or hold, a PDF noted, or the FHIR server's."""
        with session_scope(self.settings.database_url) as session:
            signed = signed_report_text(session, prior_study_id)
            files = prior_files(session, prior_study_id, choice.reports if choice else ())
        reports = [f for f in files if (f.modality or "").upper() == "SR"] if choice is None or choice.reports else []
        pdf = choice.pdf if choice else any((f.modality or "").upper() == "DOC" for f in files)
        token = self.settings.prior_fhir_token
        return prior_report(
            signed=signed,
            sr_files=[self.settings.instance_root / f.storage_path for f in reports],
            pdf=pdf,
            study_uid=study_uid,
            fhir_url=self.settings.prior_fhir_url,
            fhir_token=token.get_secret_value() if token else None,
        )

    def _finish_prior(
        self, prior_id: int, state: PriorState, reason: str | None, report: PriorReport | None, **counts: Any
    ) -> None:
        values: dict[str, Any] = {"state": state, "reason": reason, "finished_at": utcnow(), **counts}
        if report is not None:
            values.update(report_text=report.text, report_source=report.source)
        with session_scope(self.settings.database_url) as session:
            update_prior(session, prior_id, **values)


def _close(archive: PriorArchive) -> None:
    try:
        archive.close()
    except Exception as exc:  # closing never decides a search
        log.warning("closing archive %s failed: %s", getattr(archive, "name", "?"), type(exc).__name__)
