"""The safety net between the model's answer and the stored draft: confidence, identifiers, checks, critical matches.

The model's answer is untrusted text.  Before a draft is stored or shown, :func:`guard_draft`

1. scores each finding from the token log-probabilities of its text (:mod:`models.confidence`; a server
   without ``logprobs`` gives none), and records how the answer was decoded (``models.backend.Decoding``);
2. masks the patient's identifiers the model echoed (names, ids, accession, birth date from the study's
   headers: :mod:`integration.safety.identifiers`), in the findings document and in the raw answer kept
   with the draft, each masking flagged;
3. flags contradictions between the findings and the headers of the images the model saw
   (:mod:`integration.safety.consistency`): the reviewer dismisses or fixes each before signing;
4. matches the findings and the impression against the critical result categories
   (:mod:`integration.safety.critical`, medspaCy ConText), which the analysis task turns into an alert.

It runs in the worker because it needs both sides: the models side's scores and the edge's document.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.config import Settings
from integration.findings import Document
from integration.reports.document import AI_DRAFT_NOTICE
from integration.safety.consistency import check_consistency, cited_in_answer
from integration.safety.critical import match_critical
from integration.safety.facts import StudyFacts
from integration.safety.identifiers import mask_identifiers, mask_text
from integration.store.reports import InstanceFile
from models.backend import GenerationResult
from models.confidence import CONFIDENCE_METHOD, finding_confidences
from models.draft import ParsedDraft


@dataclass(frozen=True)
class GuardedDraft:
    """A draft after the safety net: what is stored.

    Attributes
    ----------
    findings : dict
        The findings document as stored (``integration.findings.Document`` JSON, with the priors).
    text : str
        The plain-text draft, headed by the AI notice.
    raw_output : str
        The model's answer with echoed identifiers masked.
    timings : dict
        ``safety_s`` and counts: ``checks``, ``critical``, ``identifiers_masked``.
    """

    findings: dict[str, Any]
    text: str
    raw_output: str
    timings: dict[str, float]


def guard_draft(
    settings: Settings,
    parsed: ParsedDraft,
    result: GenerationResult,
    *,
    extra: Mapping[str, Any],
    evidence: Sequence[Mapping[str, Any]],
    files: Sequence[InstanceFile],
) -> GuardedDraft:
    """Run the safety net over a parsed answer.

    Parameters
    ----------
    settings : Settings
        The instance root and the critical categories.
    parsed : ParsedDraft
        The answer as parsed (:func:`models.draft.parse_draft`).
    result : GenerationResult
        The backend's result: the raw text, its token log-probabilities and the decoding path.
    extra : mapping
        Entries added to the stored document (``priors``, ``prior_note``).
    evidence : sequence of mapping
        The draft's evidence entries (image number, SOP Instance UID, ``prior``).
    files : sequence of InstanceFile
        The study's instances at the job's version (the headers read are theirs).

    Returns
    -------
    GuardedDraft
        What the draft stores.
    """
    started = time.perf_counter()
    scores = finding_confidences(result.text, result.token_logprobs, parsed.findings)
    findings = tuple(
        dataclasses.replace(finding, confidence=score) for finding, score in zip(parsed.findings, scores, strict=True)
    )
    scored = any(score is not None for score in scores)
    document = Document.read({**dataclasses.replace(parsed, findings=findings).as_json(), **extra})
    facts = StudyFacts.read(_image_paths(settings.instance_root, evidence, files), _paths(settings, files))
    document, masked = mask_identifiers(document, facts.identifiers)
    images_seen = {int(entry["image"]) for entry in evidence if isinstance(entry.get("image"), int)}
    checks = check_consistency(document, facts, images_seen, cited_in_answer(result.text))
    critical = match_critical(document, settings.critical_categories)
    document = dataclasses.replace(
        document,
        checks=(*masked, *checks),
        critical=critical,
        decoding=str(result.decoding),
        confidence_method=CONFIDENCE_METHOD if scored else "",
    )
    return GuardedDraft(
        findings=document.as_json(),
        text=document.as_text(notice=AI_DRAFT_NOTICE),
        raw_output=mask_text(parsed.raw_text, facts.identifiers),
        timings={
            "safety_s": round(time.perf_counter() - started, 4),
            "checks": float(len(checks)),
            "critical": float(len(critical)),
            "identifiers_masked": float(len(masked)),
        },
    )


def _paths(settings: Settings, files: Sequence[InstanceFile]) -> list[Path]:
    """One file per series: what the study-level facts need (a 300-slice series is read once, not 300 times)."""
    first = {f.series_uid: f for f in reversed(files)}
    return [settings.instance_root / f.storage_path for f in first.values()]


def _image_paths(root: Path, evidence: Sequence[Mapping[str, Any]], files: Sequence[InstanceFile]) -> dict[int, Path]:
    """The file of each current-study image the model saw, by image number (a prior's images are not the study's)."""
    by_uid = {f.sop_instance_uid: root / f.storage_path for f in files}
    paths: dict[int, Path] = {}
    for entry in evidence:
        number, uid = entry.get("image"), entry.get("sop_instance_uid")
        if entry.get("prior") is True or not isinstance(number, int) or uid not in by_uid:
            continue
        paths.setdefault(number, by_uid[str(uid)])
    return paths
