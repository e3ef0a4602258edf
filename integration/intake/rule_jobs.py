"""The jobs a routing rule makes for a study that became stable: its model, prompt, priority, skip and shadow.

The rule is the one :func:`integration.imaging.routing.rule_for_study` finds over the study's recorded series
(the worker asks the same function when it chooses the images).  A ``skip`` rule ends the study ``skipped``
without a job, audited ``study.skipped`` with the rule's name (shown on the worklist and ``/admin/work``).  A
rule that names a model or prompt nobody configured fails the study at once with a job whose error says so:
never a silent fall-back to the default model.  A ``stat`` rule's job goes to the stat queue and the study is
stat.  A rule with a shadow adds a second job, purpose ``shadow``, for the candidate.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from integration.imaging.routing import RoutingRule, rule_for_study
from integration.store.audit import add_event
from integration.store.jobs import JobMaker
from integration.store.opinions import PRIMARY, ROUTINE, RULE_REQUESTER, SHADOW, STAT
from integration.store.tables import AnalysisJob, JobState, Series, Study, StudyState


def study_rule(session: Session, study: Study, rules: Sequence[RoutingRule] | None) -> RoutingRule | None:
    """Return the rule that takes the study, over its recorded series (see :func:`rule_for_study`)."""
    series = session.execute(select(Series.modality, Series.body_part).where(Series.study_id == study.id)).all()
    return rule_for_study(rules, [(modality, (part,)) for modality, part in series], study.calling_ae)


def jobs_for_rule(
    session: Session,
    study: Study,
    rule: RoutingRule | None,
    *,
    queue: str,
    stat_queue: str | None,
    models: Collection[str],
    prompts: Collection[str],
    now: datetime,
) -> list[AnalysisJob]:
    """Add the jobs the rule makes for a study that became stable, and set the study's state (flushed by the caller).

    Parameters
    ----------
    study : Study
        The study, locked by the caller.
    rule : RoutingRule or None
        The rule that takes it (None: no rule takes it; the default model drafts it, and the worker says
        why when no image suits).
    queue, stat_queue : str
        The analysis queue and the stat queue (None: ``queue``).
    models, prompts : collection of str
        The configured model names and the prompt template names in force.
    now : datetime
        Current time (aware, UTC).

    Returns
    -------
    list of AnalysisJob
        The jobs to send: empty for a skipped study or one failed for an unknown name; else the primary job,
        then the shadow job when the rule has one.
    """
    detail = {"rule": rule.name if rule else None, "study_version": study.version}
    if rule is not None and rule.skip:
        study.state = StudyState.SKIPPED
        add_event(
            session,
            actor="pacs-vlm",
            action="study.skipped",
            object_type="study",
            object_id=study.study_uid,
            detail=detail,
        )
        return []
    if rule is not None and rule.priority == STAT:
        study.priority = STAT
    stat = study.priority == STAT
    chosen = rule is not None and (rule.model or rule.prompt or rule.priority == STAT or rule.has_shadow)
    requester = f"{RULE_REQUESTER}{rule.name}"[:64] if rule is not None and chosen else None
    primary = AnalysisJob(
        study_id=study.id,
        study_version=study.version,
        queue=(stat_queue or queue) if stat else queue,
        priority=STAT if stat else ROUTINE,
        purpose=PRIMARY,
        model_name=rule.model if rule else None,
        prompt_name=rule.prompt if rule else None,
        requested_by=requester,
        created_at=now,
    )
    session.add(primary)
    unknown = rule.unconfigured(models, prompts) if rule is not None else []
    if unknown:
        primary.state, primary.finished_at = JobState.FAILED, now
        primary.last_error = f"routing rule {rule.name!r} names {', '.join(unknown)}, which is not configured"[:2000]  # type: ignore[union-attr]
        study.state = StudyState.FAILED
        add_event(
            session,
            actor="pacs-vlm",
            action="study.failed",
            object_type="study",
            object_id=study.study_uid,
            detail={**detail, "unknown": unknown},
        )
        return []
    study.state = StudyState.STABLE
    jobs = [primary]
    if rule is not None and rule.has_shadow:
        shadow = AnalysisJob(
            study_id=study.id,
            study_version=study.version,
            queue=queue,  # a candidate never takes a stat slot
            priority=ROUTINE,
            purpose=SHADOW,
            model_name=rule.shadow_model if rule.shadow_model is not None else rule.model,
            prompt_name=rule.shadow_prompt,
            requested_by=requester,
            created_at=now,
        )
        session.add(shadow)
        jobs.append(shadow)
    return jobs


def rule_job_maker(
    rules: Sequence[RoutingRule] | None,
    *,
    queue: str,
    stat_queue: str | None,
    models: Collection[str],
    prompts: Collection[str],
    now: datetime,
) -> JobMaker:
    """Return what :func:`integration.store.jobs.complete_stable_studies` calls per stable study: its rule's jobs."""

    def make(session: Session, study: Study) -> list[AnalysisJob]:
        rule = study_rule(session, study, rules)
        return jobs_for_rule(
            session, study, rule, queue=queue, stat_queue=stat_queue, models=models, prompts=prompts, now=now
        )

    return make
