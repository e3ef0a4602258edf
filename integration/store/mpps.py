"""Modality Performed Procedure Steps: knowing a study is complete before its idle timer says so.

A modality that speaks MPPS tells us when it starts a procedure step (N-CREATE, ``IN PROGRESS``) and when it
ends it (N-SET, ``COMPLETED`` or ``DISCONTINUED``), with the SOP instances it made (Performed Series
Sequence).  When a step is COMPLETED, no step of the same study is still in progress, and every instance the
completed steps list is stored, the study is complete now: its ``stable_after`` becomes ``now`` and the study
assembler (:mod:`integration.intake.assembly`) completes it on its next pass.  Instances still missing are
waited for: the intake calls :func:`instance_arrived` when an instance lands in a study with an ended step,
and the last one to arrive pulls the timer in.  A DISCONTINUED step holds the study (``HELD``) for a person,
who releases it with ``pacs-vlm studies release`` (:func:`release_study`).  The idle timer stays the fallback
for modalities without MPPS, and for a COMPLETED step that lists no instance.

A step acts only on a study of its sender: at N-SET time the study's site must be the sender's site (as for
storing an instance); when an instance arrives later the step must come from the study's sender or the
instance's.  Once COMPLETED or DISCONTINUED a step may no longer be updated (PS3.4 F.7.2.2).  Patient data
is never logged; the audit names UIDs and statuses only.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integration.store.audit import add_event
from integration.store.order_tables import PerformedStep, StepStatus
from integration.store.tables import ROLE_CURRENT, Instance, Series, Study, StudyState

log = logging.getLogger(__name__)

#: Step statuses after which a step may no longer be updated.
FINAL_STATUSES = frozenset({StepStatus.COMPLETED.value, StepStatus.DISCONTINUED.value})
#: Listed UIDs looked up per statement (bound parameters stay far below the driver's limit).
_CHUNK = 5000


@dataclass(frozen=True)
class StepFacts:
    """What an N-CREATE or N-SET data set says of a step (decoded and checked by the MPPS SCP).

    Attributes
    ----------
    status : str or None
        Performed Procedure Step Status (0040,0252), when the data set has it.
    study_uid : str or None
        Study Instance UID of the first Scheduled Step Attributes Sequence item that has one.
    accession_number : str or None
        Accession Number of that item.
    instance_uids : tuple of str or None
        SOP Instance UIDs the Performed Series Sequence lists; None when the data set has no such sequence
        (an N-SET that leaves it as it was).
    """

    status: str | None = None
    study_uid: str | None = None
    accession_number: str | None = None
    instance_uids: tuple[str, ...] | None = None


class StepOutcome(enum.StrEnum):
    """What became of an N-CREATE or N-SET."""

    CREATED = "created"
    UPDATED = "updated"
    #: N-CREATE of a SOP Instance UID we hold already.
    DUPLICATE = "duplicate"
    #: N-SET of a SOP Instance UID we do not hold.
    NO_SUCH_STEP = "no_such_step"
    #: N-SET of a step that is COMPLETED or DISCONTINUED already.
    FINAL = "final"
    #: N-CREATE with a status other than IN PROGRESS, or an N-SET with an unknown status.
    INVALID_STATUS = "invalid_status"


class StudyAction(enum.StrEnum):
    """What an ended step did to its study."""

    NONE = ""
    #: Every listed instance is stored: the study's timer was pulled to now.
    COMPLETE = "complete"
    #: Some listed instances (or the study itself) have not arrived yet, or another step is in progress.
    WAITING = "waiting"
    #: DISCONTINUED: the study is held for a person.
    HELD = "held"
    #: The study is of another site than the step's sender, or already past receiving: left as it is.
    IGNORED = "ignored"


@dataclass(frozen=True)
class StepResult:
    """The outcome of an N-CREATE or N-SET and what it did to the study."""

    outcome: StepOutcome
    action: StudyAction = StudyAction.NONE
    study_uid: str | None = None


def record_created(
    session: Session,
    sop_instance_uid: str,
    facts: StepFacts,
    calling_ae: str,
    now: datetime,
) -> StepResult:
    """Record an N-CREATE: a new step, IN PROGRESS (not committed).

    Parameters
    ----------
    session : Session
        Open session; the caller commits.
    sop_instance_uid : str
        The step's SOP Instance UID (the request's, or the one we made).
    facts : StepFacts
        The data set's facts.
    calling_ae : str
        The modality's AE title.
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    StepResult
        ``CREATED``; ``DUPLICATE`` when the UID is taken; ``INVALID_STATUS`` when the status is not IN PROGRESS.

    Raises
    ------
    sqlalchemy.exc.IntegrityError
        At flush or commit, when another transaction created a step with the same UID meanwhile (a duplicate).
    """
    if facts.status is not None and facts.status != StepStatus.IN_PROGRESS.value:
        return StepResult(StepOutcome.INVALID_STATUS, study_uid=facts.study_uid)
    if session.scalar(select(PerformedStep.id).where(PerformedStep.sop_instance_uid == sop_instance_uid)):
        return StepResult(StepOutcome.DUPLICATE, study_uid=facts.study_uid)
    step = PerformedStep(
        sop_instance_uid=sop_instance_uid,
        study_uid=facts.study_uid,
        accession_number=facts.accession_number,
        status=StepStatus.IN_PROGRESS.value,
        calling_ae=calling_ae,
        instance_uids=list(facts.instance_uids or ()),
        created_at=now,
        updated_at=now,
    )
    session.add(step)  # the same UID created at the same moment elsewhere: IntegrityError at commit
    _audit(session, step, "mpps.created", calling_ae, StudyAction.NONE)
    return StepResult(StepOutcome.CREATED, study_uid=step.study_uid)


def record_set(
    session: Session,
    sop_instance_uid: str,
    facts: StepFacts,
    calling_ae: str,
    now: datetime,
    *,
    site_id: int | None = None,
) -> StepResult:
    """Record an N-SET: update the step and, when it ended, act on its study (not committed).

    Parameters
    ----------
    session : Session
        Open session; the caller commits.
    sop_instance_uid : str
        The requested SOP Instance UID.
    facts : StepFacts
        The data set's facts (what it does not carry stays as it was).
    calling_ae : str
        The modality's AE title.
    now : datetime
        Current time (aware, UTC).
    site_id : int, optional
        The sender's site: the step acts only on a study of this site.

    Returns
    -------
    StepResult
        ``UPDATED`` with what it did to the study; ``NO_SUCH_STEP``, ``FINAL`` (may no longer be updated) or
        ``INVALID_STATUS`` (nothing changed).
    """
    step = session.scalar(
        select(PerformedStep).where(PerformedStep.sop_instance_uid == sop_instance_uid).with_for_update()
    )
    if step is None:
        return StepResult(StepOutcome.NO_SUCH_STEP, study_uid=facts.study_uid)
    if step.status in FINAL_STATUSES:
        return StepResult(StepOutcome.FINAL, study_uid=step.study_uid)
    if facts.status is not None and facts.status not in {s.value for s in StepStatus}:
        return StepResult(StepOutcome.INVALID_STATUS, study_uid=step.study_uid)
    if facts.study_uid is not None:
        step.study_uid, step.accession_number = facts.study_uid, facts.accession_number
    if facts.instance_uids is not None:
        step.instance_uids = list(facts.instance_uids)
    if facts.status is not None:
        step.status = facts.status
    step.updated_at = now
    action = StudyAction.NONE
    if step.status in FINAL_STATUSES:
        step.ended_at = now
        session.flush()
        study = _study(session, step.study_uid)
        if study is not None and study.site_id != site_id:
            action = StudyAction.IGNORED
        else:
            action = _settle(session, study, step, now)
    _audit(session, step, "mpps.updated", calling_ae, action)
    return StepResult(StepOutcome.UPDATED, action, step.study_uid)


def instance_arrived(
    session: Session, study_id: int, sop_instance_uid: str, calling_ae: str, now: datetime, *, new_study: bool
) -> StudyAction:
    """Act on a study whose instance just arrived while one of its steps has ended (not committed).

    Called by the intake only when a step of the instance's study is COMPLETED or DISCONTINUED (the
    recording statement tells it, at no extra round trip).  A study opened after its step was
    DISCONTINUED is held at once; when the instance is one a completed step lists and now every listed
    instance is stored, the study is complete now.  An instance no step lists leaves the idle timer to
    decide (it may be the first of more the modality did not announce).

    Parameters
    ----------
    session : Session
        Open session; the caller commits.
    study_id : int
        The study the instance joined.
    sop_instance_uid : str
        The instance's SOP Instance UID.
    calling_ae : str
        The instance's sender.
    now : datetime
        Current time (aware, UTC).
    new_study : bool
        The instance opened the study.
    """
    study = session.scalar(select(Study).where(Study.id == study_id).with_for_update())
    if study is None or study.state != StudyState.RECEIVING or study.role != ROLE_CURRENT:
        return StudyAction.NONE
    senders = {study.calling_ae, calling_ae}
    steps = [s for s in _steps(session, study.study_uid) if s.calling_ae in senders]
    discontinued = next((s for s in steps if s.status == StepStatus.DISCONTINUED.value), None)
    if discontinued is not None:
        if not new_study:  # held before, and released by a person since: stays released
            return StudyAction.NONE
        action = _settle(session, study, discontinued, now)
    else:
        completed = next(
            (s for s in steps if s.status == StepStatus.COMPLETED.value and sop_instance_uid in s.instance_uids), None
        )
        if completed is None:
            return StudyAction.NONE
        action = _settle(session, study, completed, now)
    if action is StudyAction.COMPLETE:
        add_event(
            session,
            actor=f"ae:{calling_ae}",
            action="study.complete_by_mpps",
            object_type="study",
            object_id=study.study_uid,
            detail={"last_listed_instance_arrived": True},
        )
    return action


def release_study(session: Session, study_uid: str, *, actor: str, now: datetime) -> bool:
    """Put a held study back to receiving with its timer run out, so the assembler completes it (audited).

    Parameters
    ----------
    session : Session
        Open session; the caller commits.
    study_uid : str
        The study.
    actor : str
        Who released it (``cli:<user>``).
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    bool
        True when the study was held and is released; False when there is no such study or it is not held.
    """
    study = session.scalar(select(Study).where(Study.study_uid == study_uid).with_for_update())
    if study is None or study.state != StudyState.HELD:
        return False
    study.state = StudyState.RECEIVING
    study.stable_after = now
    study.updated_at = now
    add_event(session, actor=actor, action="study.released", object_type="study", object_id=study_uid)
    return True


def _study(session: Session, study_uid: str | None) -> Study | None:
    if not study_uid:
        return None
    return session.scalar(
        select(Study).where(Study.study_uid == study_uid, Study.role == ROLE_CURRENT).with_for_update()
    )


def _steps(session: Session, study_uid: str) -> Sequence[PerformedStep]:
    return session.scalars(select(PerformedStep).where(PerformedStep.study_uid == study_uid)).all()


def _settle(session: Session, study: Study | None, step: PerformedStep, now: datetime) -> StudyAction:
    """Hold the study (DISCONTINUED) or pull its timer in (COMPLETED, everything listed is stored)."""
    if study is None:
        return StudyAction.WAITING  # nothing stored yet: the intake settles it when instances arrive
    if study.state != StudyState.RECEIVING:
        return StudyAction.IGNORED  # held already, or completed by its timer before the step ended
    if step.status == StepStatus.DISCONTINUED.value:
        study.state = StudyState.HELD
        study.updated_at = now
        log.info("study %d held: its procedure step was discontinued", study.id)
        return StudyAction.HELD
    steps = _steps(session, study.study_uid)
    if any(s.status == StepStatus.IN_PROGRESS.value for s in steps):
        return StudyAction.WAITING
    listed = {uid for s in steps if s.status == StepStatus.COMPLETED.value for uid in s.instance_uids}
    if not listed:
        return StudyAction.WAITING  # a step that lists nothing: the idle timer decides
    uids, stored = sorted(listed), 0
    for start in range(0, len(uids), _CHUNK):
        stored += (
            session.scalar(
                select(func.count(Instance.id))
                .join(Series, Series.id == Instance.series_id)
                .where(Series.study_id == study.id, Instance.sop_instance_uid.in_(uids[start : start + _CHUNK]))
            )
            or 0
        )
    if stored < len(listed):
        return StudyAction.WAITING
    if study.stable_after > now:
        study.stable_after = now
        study.updated_at = now
    log.info("study %d complete by MPPS: all %d listed instances stored", study.id, len(listed))
    return StudyAction.COMPLETE


def _audit(session: Session, step: PerformedStep, action: str, calling_ae: str, study_action: StudyAction) -> None:
    detail: dict[str, object] = {
        "step": step.sop_instance_uid,
        "status": step.status,
        "instances": len(step.instance_uids),
    }
    if study_action is not StudyAction.NONE:
        detail["study"] = study_action.value
    add_event(
        session, actor=f"ae:{calling_ae}", action=action, object_type="study", object_id=step.study_uid, detail=detail
    )
