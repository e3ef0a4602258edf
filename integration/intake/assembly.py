"""Study assembly: idle timers kept in the database, hand-off to the queue, re-sends.

A study is complete when no instance arrived for its ``stable_seconds``.  The
timer is a column (``studies.stable_after``), so a restarted listener loses
nothing: the next pass finds the study and queues it.  The same loop is the
outbox reconciler: jobs whose message never reached the broker, whose message
is old, or that were queued before the broker restarted (Redis ``run_id``
changed) are sent again; the worker's task is idempotent.  Critical-finding alerts nobody acknowledged in time are
escalated to their next contact (:mod:`integration.alerts.escalation`).  Studies that become stable also get their
worklist attributes (patient, accession, date, description) from one stored instance's header.  Where a
prior fetcher runs beside the assembler, a stable study whose prior search is still open waits for it, at
most ``prior_wait_seconds``, so its draft sees the prior; without one nobody finishes searches, so nothing waits.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from integration.alerts.escalation import escalate_due_alerts
from integration.alerts.raise_alerts import open_missing_alerts
from integration.config import Settings
from integration.intake.rule_jobs import rule_job_maker
from integration.intake.study_attributes import record_study_attributes
from integration.live_config import live_settings, prompt_names
from integration.queue import broker_identity, send_analyze_study, send_deliver
from integration.store.audit import add_event
from integration.store.deliveries import deliveries_to_resend
from integration.store.jobs import (
    complete_stable_studies,
    jobs_to_send,
    mark_sent,
    record_job_error,
    restart_receiving_timers,
)
from integration.store.session import session_scope
from integration.store.tables import AnalysisJob, utcnow

log = logging.getLogger(__name__)

#: Seconds between the reconciler's alert passes (missing alerts, escalation, lost notifications).
ALERT_PASS_SECONDS = 5.0

#: A job running this long past the hard time limit lost its worker (the limit would have ended it).
LOST_WORKER_MARGIN_SECONDS = 120.0


@dataclass
class PassResult:
    """What one assembly pass did.

    Attributes
    ----------
    jobs_created : int
        Studies that became stable and got a job.
    sent : int
        Messages sent (new and re-sent).
    send_failures : int
        Messages the broker did not take (retried next pass).
    deliveries_resent : int
        Messages of pending deliveries sent again.
    alerts_escalated : int
        Critical-finding alerts not acknowledged in time, notified to their next contact.
    """

    jobs_created: int = 0
    sent: int = 0
    send_failures: int = 0
    deliveries_resent: int = 0
    alerts_escalated: int = 0


class StudyAssembler:
    """Completes stable studies and keeps the queue in step with the job table.

    Parameters
    ----------
    settings : Settings
        The settings.
    wait_for_priors : bool
        A prior fetcher runs beside this assembler: a study waits for its prior search (at most
        ``settings.prior_wait_seconds`` past its idle timer) before its job is created.
    """

    def __init__(self, settings: Settings, *, wait_for_priors: bool = False) -> None:
        self.settings = settings
        self.prior_wait_seconds = float(settings.prior_wait_seconds) if wait_for_priors else 0.0
        self._broker_id: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._alerts_after = 0.0  # monotonic time of the next alert pass

    def run_once(self) -> PassResult:
        """Run one pass: complete stable studies, then (re)send what needs sending.

        Returns
        -------
        PassResult
            Counts of what happened.
        """
        result = PassResult()
        url = self.settings.database_url
        without_job: list[int] = []  # skipped by their rule (or failed for an unknown name): still on the worklist
        with session_scope(url) as session:
            live = live_settings(self.settings)
            sites = {ae: peer.site for ae, peer in live.calling_aes.items() if peer.site}
            created = complete_stable_studies(
                session,
                utcnow(),
                self.settings.analysis_queue,
                sites=sites,
                prior_wait_seconds=self.prior_wait_seconds,
                stat_queue=self.settings.stat_queue,
                make_jobs=rule_job_maker(  # the rule decides model, prompt, priority, skip and shadow
                    live.routing_rules,
                    queue=self.settings.analysis_queue,
                    stat_queue=self.settings.stat_queue,
                    models=live.models.keys(),
                    prompts=prompt_names(self.settings),
                    now=utcnow(),
                ),
                without_job=without_job,
            )
        result.jobs_created = len(created)
        self._record_attributes(created, without_job)
        for job_id in created:
            log.info("study complete: analysis job %d created", job_id)
        everything = self._broker_restarted()
        with session_scope(url) as session:
            pending = jobs_to_send(
                session,
                utcnow(),
                self.settings.resend_after_seconds,
                everything=everything,
                lost_after=self.settings.analysis_time_limit + LOST_WORKER_MARGIN_SECONDS,
            )
        for item in pending:
            try:
                send_analyze_study(self.settings, item.job_id, item.queue, item.send_count)
            except Exception as exc:  # kombu raises many kinds when the broker is away
                result.send_failures += 1
                log.warning("analysis job %d not sent, will retry: %s", item.job_id, type(exc).__name__)
                with session_scope(url) as session:
                    record_job_error(session, item.job_id, f"broker: {type(exc).__name__}: {exc}")
                break
            with session_scope(url) as session:
                mark_sent(session, item.job_id, utcnow())
                job = session.get(AnalysisJob, item.job_id)
                study_uid = job.study.study_uid if job else None
                add_event(  # commits with the job's sent state, at the end of this scope
                    session,
                    actor="pacs-vlm",
                    action="study.queued" if item.send_count == 0 else "study.requeued",
                    object_type="study",
                    object_id=study_uid,
                    detail={"job_id": item.job_id, "queue": item.queue, "send": item.send_count + 1},
                )
            result.sent += 1
            if item.send_count:
                log.info("analysis job %d re-sent (send %d)", item.job_id, item.send_count + 1)
        result.deliveries_resent = self._resend_deliveries(everything)
        if time.monotonic() >= self._alerts_after:  # every few seconds, not every pass: minutes are what matter
            self._alerts_after = time.monotonic() + ALERT_PASS_SECONDS
            open_missing_alerts(self.settings)  # a draft whose alert the worker could not open
            result.alerts_escalated = escalate_due_alerts(self.settings).escalated  # and lost notifications re-sent
        return result

    def _record_attributes(self, job_ids: list[int], study_ids: list[int]) -> None:
        """Fill the worklist attributes of the studies just completed; a failure only costs the worklist columns."""
        if not job_ids and not study_ids:
            return
        try:
            with session_scope(self.settings.database_url) as session:
                record_study_attributes(session, self.settings.instance_root, job_ids, study_ids=study_ids)
        except SQLAlchemyError as exc:
            log.warning("worklist attributes not recorded (database): %s", type(exc).__name__)

    def _resend_deliveries(self, everything: bool) -> int:
        """Re-send the messages of pending deliveries that are overdue (or all, after a broker restart)."""
        with session_scope(self.settings.database_url) as session:
            overdue = deliveries_to_resend(session, utcnow(), self.settings.resend_after_seconds, everything=everything)
        for count, delivery_id in enumerate(overdue):
            try:
                send_deliver(self.settings, delivery_id)
            except Exception as exc:  # the next pass after the grace period tries again
                log.warning("delivery %d not re-sent: %s", delivery_id, type(exc).__name__)
                return count
            log.info("delivery %d re-sent", delivery_id)
        return len(overdue)

    def _broker_restarted(self) -> bool:
        try:
            current = broker_identity(self.settings)
        except Exception as exc:  # broker down: nothing to compare
            log.warning("broker unreachable: %s", type(exc).__name__)
            return False
        restarted = self._broker_id is not None and current is not None and current != self._broker_id
        if current is not None:
            self._broker_id = current
        if restarted:
            log.warning("broker restarted: re-sending every queued analysis job")
        return restarted

    def start(self) -> None:
        """Give receiving studies a fresh idle timer, then run passes every ``assembly_interval`` seconds.

        A study whose timer ran out while no listener ran is not complete: its sender retries now.
        """
        try:
            with session_scope(self.settings.database_url) as session:
                moved = restart_receiving_timers(session, utcnow(), live_settings(self.settings).stable_seconds_for)
            if moved:
                log.info("idle timers restarted for %d studies still receiving", moved)
        except SQLAlchemyError as exc:
            log.warning("idle timers not restarted (database): %s", type(exc).__name__)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="study-assembly", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now rather than after ``assembly_interval`` (a study became complete by MPPS)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the background passes and wait for the current one to end."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.assembly_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                log.warning("study assembly pass failed (database): %s", type(exc).__name__)
            except Exception:
                log.exception("study assembly pass failed")
