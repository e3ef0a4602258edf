"""From a claimed analysis job to a draft report: select images, prompt the model, parse its answer."""

from __future__ import annotations

import time
from collections.abc import Sequence

from PIL import Image

from integration.config import Settings
from integration.imaging.routing import rule_for_study, rules_led_by
from integration.imaging.selection import NoImages, evidence_entries, prepare_study
from integration.store.priors import PriorsView
from integration.store.reports import ClaimedJob, DraftRecord, InstanceFile
from integration.store.tables import PriorState
from models.backend import GenerationRequest, VisionLanguageBackend
from models.draft import parse_draft
from models.draft_schema import DRAFT_SCHEMA
from models.prompts import (
    SYSTEM_PROMPT,
    TEMPLATES,
    PromptTemplate,
    render_prompt_parts,
    select_template,
    template_named,
)
from models.registry import DEFAULT_IMAGE_PRESENTATION, FAMILIES
from worker.comparison import build_comparison, prior_image_budget, read_current_header
from worker.outbound import outbound_release
from worker.safety import guard_draft


def draft_study(
    settings: Settings,
    job: ClaimedJob,
    files: Sequence[InstanceFile],
    backend: VisionLanguageBackend,
    *,
    load_seconds: float = 0.0,
    clinical_question: str | None = None,
    prompt_name: str | None = None,
    templates: Sequence[PromptTemplate] = TEMPLATES,
    priors: PriorsView | None = None,
) -> DraftRecord:
    """Draft a report for one study version; the draft is ready to store.

    Parameters
    ----------
    settings : Settings
        The settings (routing rules, image limits, new-token limit).
    files : sequence of InstanceFile
        The study's stored instances at the job's version.
    load_seconds : float
        Time this job spent loading the model (recorded with the timings).
    clinical_question : str or None
        The referrer's question; None takes the one in the study's first image instance
        (:attr:`~integration.imaging.selection.PreparedStudy.clinical_question`).
    prompt_name : str or None
        A prompt template to use instead of the one chosen by modality and body part (a second opinion's).
    templates : sequence of PromptTemplate
        The templates in force (:func:`worker.live_prompts.templates_in_force`); the built-ins by default.
    priors : PriorsView or None
        The study's prior search and priors (:mod:`worker.comparison`); None: the draft says no prior
        is available.

    Raises
    ------
    integration.imaging.selection.NoImages
        Nothing in the study is an image for the model (or, for a model server outside the trust
        boundary, every image was withheld: see :mod:`worker.outbound`).
    models.prompts.UnknownPrompt
        ``prompt_name`` names no template.
    """
    named = template_named(prompt_name, templates) if prompt_name is not None else None
    identity = backend.identity
    family = FAMILIES.get(identity.family)
    limit = settings.max_images
    if family is not None:
        # By the family's token budget: a whole series for LongLLaVA, a sample for 576-token LLaVA models.
        limit = min(limit, family.image_limit) if limit is not None else family.image_limit
    presentation = family.image_presentation if family is not None else DEFAULT_IMAGE_PRESENTATION
    release = outbound_release(settings, files, backend)
    prior_budget = 0
    # the rule that made the study's jobs (same function, same recorded series) leads the image selection
    rule = rule_for_study(settings.routing_rules, {(f.modality, (f.body_part,)) for f in files}, job.calling_ae)
    rules = rules_led_by(rule, settings.routing_rules)
    has_prior_images = priors is not None and any(p.state is PriorState.READY and p.files for p in priors.priors)
    if rule is not None and has_prior_images and presentation != "montage":
        prior_budget = prior_image_budget(rule, limit if limit is not None else rule.max_images)
    try:
        prepared = prepare_study(
            [settings.instance_root / f.storage_path for f in release.files],
            calling_ae=job.calling_ae,
            rules=rules,
            max_images=(limit - prior_budget) if limit is not None else None,
            image_size=settings.image_size,
            presentation=presentation,
        )
    except NoImages as exc:
        if not release.withheld:
            raise
        raise NoImages(
            f"{exc}; {release.withheld} instance(s) with burned-in annotation or recognizable features were "
            "withheld: they may not go to a model server outside the trust boundary (DICOM PS3.15 basic profile)",
            exc.skipped,
        ) from exc
    prepared = release.screen_study(prepared)  # burned-in text, for a server outside the trust boundary
    started = time.perf_counter()
    current = read_current_header(settings.instance_root / release.files[0].storage_path)
    comparison = build_comparison(
        priors,
        instance_root=settings.instance_root,
        current=current,
        rule=prepared.rule,
        rules=rules,
        image_budget=prior_budget,
        image_size=settings.image_size,
        deidentified=release.deidentified,
        screen=release.screen_images,
    )
    template = named or select_template(prepared.modality, prepared.body_part, templates)
    question = clinical_question if clinical_question is not None else prepared.clinical_question
    sent_question = release.question(question)
    parts = render_prompt_parts(
        template,
        [image.label for image in prepared.images],
        sent_question,
        priors=comparison.contexts,
        prior_labels=comparison.labels,
        patient=current.patient(release.deidentified),
        no_prior=comparison.note or None,
    )
    model_images = [*comparison.images, *prepared.images]
    images = tuple(Image.fromarray(image.pixels) for image in model_images)
    request = GenerationRequest(
        request_id=f"analysis-job-{job.job_id}",
        prompt=parts.prompt,
        preamble=parts.preamble,
        images=images,
        system_prompt=SYSTEM_PROMPT,
        max_new_tokens=settings.max_new_tokens,
        response_schema=DRAFT_SCHEMA if settings.constrained_decoding else None,
    )
    prompt_seconds = time.perf_counter() - started
    (result,) = backend.generate([request])
    started = time.perf_counter()
    parsed = release.annotate(
        parse_draft(result.text, len(images)), question_dropped=bool(question) and not sent_question
    )
    evidence = [*comparison.evidence, *evidence_entries(prepared.images, first=len(comparison.images) + 1)]
    guarded = guard_draft(
        settings,
        parsed,
        result,
        extra={"priors": [reference.as_json() for reference in comparison.references], "prior_note": comparison.note},
        evidence=evidence,
        files=release.files,
    )
    timings = {
        **{f"{name}_s": round(value, 4) for name, value in prepared.timings.items()},
        "prompt_s": round(prompt_seconds, 4),
        "load_s": round(load_seconds, 4),
        "generate_s": round(result.seconds, 4),
        "batch_size": getattr(result, "batch_size", 1),
        "parse_s": round(time.perf_counter() - started, 4),
        **comparison.timings,
        **release.timings(),
        **guarded.timings,
    }
    return DraftRecord(
        model_id=identity.model_id,
        model_revision=identity.revision,
        model_family=identity.family,
        prompt_version=template.key,
        structured=parsed.structured,
        findings=guarded.findings,
        text=guarded.text,
        raw_output=guarded.raw_output,
        evidence=evidence,
        timings=timings,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
    )
