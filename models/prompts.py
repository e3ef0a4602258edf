"""Versioned prompt templates per modality and body part, and the prompt built from them.

A template asks the model for a structured draft (findings, each with the
images it rests on; impression; limitations; the comparison with a prior study)
as one JSON object.  Every draft records the template's key (``name/vN``), so a
change of wording is a new version and drafts stay comparable per prompt version.

:func:`render_prompt_parts` splits a prompt in two for a radiologist's reading
order: a *preamble*, which the backend places after the system prompt and
before the images (the task, the patient, each prior study with its report),
and the *prompt* after the images (what each image is, the question, the
comparison request, the output format).  The stable text comes first, so that a
serving engine's prefix cache can reuse it.  Every text from outside (a prior's
report, description, the clinical question) is untrusted: cleaned to one line,
capped, its double quotes made single, and quoted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from models.draft import clean

#: Longest clinical question quoted in a prompt (it is untrusted text from the referrer): as long as the edge
#: reads one (``integration.imaging.referral``; a telemedicine case may carry 2000 characters).
MAX_QUESTION_CHARS = 2000
#: Longest prior report quoted in a prompt (untrusted text: our signed report, an SR, a FHIR report).
MAX_PRIOR_REPORT_CHARS = 2000
#: Longest short text (a prior's date, modality or description, the patient's age or sex) in a prompt.
MAX_PROMPT_FIELD_CHARS = 80
#: Said when a prior search found no prior study.
NO_PRIOR = "No prior study is available for comparison."
#: Said, followed by the reason, when a prior exists but was not fetched in time.
PRIOR_NOT_RETRIEVED = "A prior study exists but could not be retrieved"
#: Asked after the images when the model is given a prior study.
COMPARE_REQUEST = (
    "Compare with the prior study: say what is new, unchanged, increased or decreased, in the comparison and in "
    "the findings it concerns."
)

#: The JSON layout every template asks for (the parser also accepts plain sections).
OUTPUT_FORMAT = (
    "Answer with one JSON object and nothing else, in this layout:\n"
    '{"findings": [{"text": "<one finding>", "images": [<image numbers it is seen on>], '
    '"laterality": "<left, right, bilateral, midline or none>", "body_region": "<e.g. chest, left lung>", '
    '"certainty": [<the words of certainty used, e.g. "possible", "likely"; none when definite>], '
    '"urgency": "<critical, urgent, routine or none>"}], '
    '"impression": "<one or two sentences>", '
    '"limitations": "<what limits this reading, e.g. images not seen, technique>", '
    '"comparison": "<what is new, unchanged, increased or decreased since the prior study; '
    "'no prior study' when none is given>\"}\n"
    "Image numbers are the numbers given above (1 is the first image). "
    'A finding on one image may add "box": [x0, y0, x1, y1], its region as fractions 0 to 1 of that image. '
    "Urgency is critical for a finding that needs a clinician now (e.g. pneumothorax, intracranial haemorrhage, "
    "free air), none for a normal finding. "
    "Report only what the images show; say 'no acute abnormality' when that is the finding."
)

SYSTEM_PROMPT = (
    "You are a radiology assistant drafting a preliminary report for a radiologist, who will review, edit and "
    "sign it. Be factual and concise, use standard radiology terminology, and never invent clinical history."
)


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt.

    Attributes
    ----------
    name : str
        Stable name, e.g. ``ct-chest``.
    version : int
        Bumped whenever the wording changes.
    modality : str or None
        DICOM modality it applies to (None: any).
    body_parts : tuple of str
        Body part keywords it applies to (empty: any).
    task : str
        What the model is asked to do, before the output format.
    """

    name: str
    version: int
    modality: str | None
    body_parts: tuple[str, ...]
    task: str

    @property
    def key(self) -> str:
        """``name/vN``, stored with every draft."""
        return f"{self.name}/v{self.version}"

    def matches(self, modality: str | None, body_part: str | None) -> bool:
        """Whether this template applies to a study of this modality and body part."""
        if self.modality is not None and (modality or "").upper() != self.modality:
            return False
        if not self.body_parts:
            return True
        part = (body_part or "").upper()
        return any(keyword in part for keyword in self.body_parts)


TEMPLATES: tuple[PromptTemplate, ...] = (
    PromptTemplate(
        "ct-chest",
        3,
        "CT",
        ("CHEST", "LUNG", "THORAX"),
        "These are axial slices of a chest CT, in order from head to feet, shown in lung and mediastinal windows. "
        "Describe lungs, airways, pleura, mediastinum, heart and great vessels, and bones in view.",
    ),
    PromptTemplate(
        "ct-head",
        3,
        "CT",
        ("HEAD", "BRAIN", "SKULL"),
        "These are axial slices of a head CT in a brain window, in order from skull base to vertex. "
        "Describe haemorrhage, infarction, mass effect, ventricles, extra-axial spaces and bones.",
    ),
    PromptTemplate(
        "ct",
        3,
        "CT",
        (),
        "These are slices of a CT study, in order along the scan. Describe the relevant findings by organ.",
    ),
    PromptTemplate(
        "mr",
        3,
        "MR",
        (),
        "These are images of an MR study. Describe the relevant findings by structure, noting the sequence where "
        "it can be told.",
    ),
    PromptTemplate(
        "radiograph-chest",
        3,
        None,
        ("CHEST", "THORAX", "LUNG"),
        "These are chest radiographs. Describe lines and tubes, lungs, pleura, heart size, mediastinum and bones.",
    ),
    PromptTemplate(
        "general",
        3,
        None,
        (),
        "These are medical images from one study. Describe the relevant findings.",
    ),
)


def select_template(
    modality: str | None, body_part: str | None, templates: Sequence[PromptTemplate] = TEMPLATES
) -> PromptTemplate:
    """Return the first of ``templates`` that applies to the modality and body part.

    ``templates`` are the ones in force (the worker's come from the database; the built-in
    :data:`TEMPLATES` by default, e.g. for the evaluation runner).  When none applies, the built-in
    catch-all ``general`` is used, so a draft is never refused for want of a template.
    """
    for template in templates:
        if template.matches(modality, body_part):
            return template
    return TEMPLATES[-1]


class UnknownPrompt(LookupError):
    """A job names a prompt template that does not exist (a permanent failure); the message lists the names."""


def template_names(templates: Sequence[PromptTemplate] = TEMPLATES) -> tuple[str, ...]:
    """Return the names of the prompt templates (``ct-chest``, ``general`` ...), in the order they are tried."""
    return tuple(t.name for t in templates)


def template_named(name: str, templates: Sequence[PromptTemplate] = TEMPLATES) -> PromptTemplate:
    """Return the current template of this name among ``templates`` (a second opinion's prompt override).

    Raises
    ------
    UnknownPrompt
        No template has this name; the message lists the names there are.
    """
    for template in templates:
        if template.name == name:
            return template
    raise UnknownPrompt(f"unknown prompt {name!r}: the prompt templates are {', '.join(template_names(templates))}")


def render_prompt(template: PromptTemplate, image_labels: Sequence[str], clinical_question: str | None = None) -> str:
    """Write the user prompt in one piece: numbered images, the task, the clinical question, the output format.

    ``image_labels`` has one short label per image, in the order the images are given (no patient
    data); ``clinical_question`` is the referrer's question (from a telemedicine upload), quoted as
    untrusted text.  For a prompt with priors or the patient, see :func:`render_prompt_parts`.
    """
    lines = [f"Image {index}: {label}" for index, label in enumerate(image_labels, start=1)]
    lines.append("")
    lines.append(template.task)
    if question := _question_line(clinical_question):
        lines.append(question)
    lines.append(OUTPUT_FORMAT)
    return "\n".join(lines)


@dataclass(frozen=True)
class PriorContext:
    """A prior study as the model is told of it (its images are given separately, labelled as prior).

    Attributes
    ----------
    when : str
        When it was made: ``"on 2024-03-01"``, or ``"412 days earlier"`` for a model server outside the
        trust boundary (no dates leave it).
    modality : str or None
        Its modality (``CT``).
    description : str or None
        Its study description (untrusted: cleaned in the prompt).
    report : str or None
        Its report text (untrusted: cleaned to one line, capped at :data:`MAX_PRIOR_REPORT_CHARS` and quoted).
    report_source : str or None
        Where the report came from (``signed``, ``sr``, ``fhir``), said with it.
    images : int
        How many of its images the model is given (they come first, in prior order).
    """

    when: str
    modality: str | None = None
    description: str | None = None
    report: str | None = None
    report_source: str | None = None
    images: int = 0


@dataclass(frozen=True)
class PatientContext:
    """What the model is told of the patient: for a model server outside the trust boundary an age band only.

    Attributes
    ----------
    age : str or None
        ``"67 years"``, or a band (``"60-69 years"``); None: not said.
    sex : str or None
        ``"female"``, ``"male"``; None: not said.
    """

    age: str | None = None
    sex: str | None = None


@dataclass(frozen=True)
class PromptParts:
    """A prompt in the two places a backend puts text (see :attr:`models.backend.GenerationRequest.preamble`).

    Attributes
    ----------
    preamble : str
        Before the images: the template's task, the patient, the prior studies with their reports.
    prompt : str
        After the images: the numbered image labels, the clinical question, the comparison request, the output
        format.
    """

    preamble: str
    prompt: str


def render_prompt_parts(
    template: PromptTemplate,
    image_labels: Sequence[str],
    clinical_question: str | None = None,
    *,
    priors: Sequence[PriorContext] = (),
    prior_labels: Sequence[str] = (),
    patient: PatientContext | None = None,
    no_prior: str | None = None,
) -> PromptParts:
    """Write a prompt as a preamble (before the images) and a prompt (after them), stable parts first.

    Parameters
    ----------
    template : PromptTemplate
        The template; its task opens the preamble.
    image_labels : sequence of str
        One short label per image of the current study, in order (no patient data).
    clinical_question : str or None
        The referrer's question (untrusted; quoted).
    priors : sequence of PriorContext
        The prior studies, most recent first; each is described in the preamble with its report.
    prior_labels : sequence of str
        One label per prior image; these images come first (numbers 1..p), labelled ``prior study``
        (``prior study 2`` with several priors, by their ``images`` counts), then the current images
        (p+1..n, labelled ``current study`` when there are prior images).
    patient : PatientContext or None
        Age and sex; None says nothing of the patient (the caller decides what may leave).
    no_prior : str or None
        Said in the preamble when ``priors`` is empty: :data:`NO_PRIOR`, or :data:`PRIOR_NOT_RETRIEVED`
        with the reason; None says nothing (no prior search was made).

    Returns
    -------
    PromptParts
        The preamble and the prompt.
    """
    preamble = [template.task]
    if patient is not None and (said := _patient_line(patient)):
        preamble.append(said)
    for number, prior in enumerate(priors, start=1):
        preamble.append(_prior_line(prior, number if len(priors) > 1 else None))
    if not priors and no_prior:
        preamble.append(_field(no_prior, MAX_QUESTION_CHARS))
    owners = _prior_owners(priors, len(prior_labels))
    labels = [f"prior study{owner}, {label}" for owner, label in zip(owners, prior_labels, strict=True)]
    labels += [f"current study, {label}" if prior_labels else label for label in image_labels]
    lines = [f"Image {index}: {label}" for index, label in enumerate(labels, start=1)]
    lines.append("")
    if question := _question_line(clinical_question):
        lines.append(question)
    if priors:
        lines.append(COMPARE_REQUEST)
    lines.append(OUTPUT_FORMAT)
    return PromptParts("\n".join(preamble), "\n".join(lines))


def prior_when(prior_date: str | None, current_date: str | None, *, exact: bool) -> str:
    """Say when a prior study was made, for :attr:`PriorContext.when`.

    Parameters
    ----------
    prior_date, current_date : str or None
        DICOM dates, ``YYYYMMDD``.
    exact : bool
        True: ``"on 2024-03-01"`` (an in-process model); False: ``"412 days earlier"`` (a model server
        outside the trust boundary: no dates leave it).

    Returns
    -------
    str
        The phrase; ``"at an unknown date"`` when the dates do not tell.
    """
    prior, current = _dicom_date(prior_date), _dicom_date(current_date)
    if exact and prior is not None:
        return f"on {prior.isoformat()}"
    if prior is not None and current is not None and prior <= current:
        days = (current - prior).days
        return "the same day" if days == 0 else f"{days} day{'s' if days != 1 else ''} earlier"
    return "at an unknown date"


def age_in_years(patient_age: str | None, birth_date: str | None, study_date: str | None) -> int | None:
    """Return the patient's age at the study, in whole years: Patient's Age, else birth and study dates.

    ``patient_age`` is a DICOM AS value (``067Y``, ``018M``, ``003W``, ``010D``); the dates are ``YYYYMMDD``.
    None when neither tells (or the result is not 0 to 150).
    """
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", patient_age or "", re.I)
    years: int | None = None
    if match:
        per_year = {"D": 365.25, "W": 52.18, "M": 12, "Y": 1}[match.group(2).upper()]
        years = int(int(match.group(1)) // per_year)
    elif (born := _dicom_date(birth_date)) is not None and (seen := _dicom_date(study_date)) is not None:
        years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return years if years is not None and 0 <= years <= 150 else None


def age_text(years: int | None, *, band: bool) -> str | None:
    """Say an age for :attr:`PatientContext.age`: ``"67 years"``, or as a decade band (``"60-69 years"``).

    A band for a model server outside the trust boundary; ages of 90 and over are ``"90 years or older"``
    either way (HIPAA Safe Harbor).  None for None.
    """
    if years is None:
        return None
    if years >= 90:
        return "90 years or older"
    if band:
        return f"{years // 10 * 10}-{years // 10 * 10 + 9} years"
    return f"{years} year{'s' if years != 1 else ''}"


def sex_text(patient_sex: str | None) -> str | None:
    """Say a DICOM Patient's Sex (``F``, ``M``, ``O``) for :attr:`PatientContext.sex`; None when not given."""
    return {"F": "female", "M": "male", "O": "other"}.get((patient_sex or "").strip().upper())


def _dicom_date(value: str | None) -> date | None:
    try:
        return datetime.strptime((value or "").strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _field(value: object, limit: int = MAX_PROMPT_FIELD_CHARS) -> str:
    """Untrusted text for a prompt: one line, capped, double quotes made single."""
    return clean(value, limit, one_line=True).replace('"', "'")


def _question_line(clinical_question: str | None) -> str | None:
    if not clinical_question or not (question := _field(clinical_question, MAX_QUESTION_CHARS)):
        return None
    return f'The referring clinician asks: "{question}" Address it in the impression.'


def _patient_line(patient: PatientContext) -> str | None:
    said = [
        f"{name} {text}"
        for name, value in (("age", patient.age), ("sex", patient.sex))
        if (text := _field(value or ""))
    ]
    return f"Patient: {', '.join(said)}." if said else None


def _prior_line(prior: PriorContext, number: int | None) -> str:
    study = ", ".join(text for value in (prior.modality, prior.description) if (text := _field(value or "")))
    line = f"Prior study{f' {number}' if number else ''} ({_field(prior.when)}): {study or 'study'}."
    report = _field(prior.report or "", MAX_PRIOR_REPORT_CHARS)
    if not report:
        return f"{line} Its report is not available."
    source = _field(prior.report_source or "")
    return f'{line} Its report{f" ({source})" if source else ""}: "{report}"'


def _prior_owners(priors: Sequence[PriorContext], count: int) -> list[str]:
    """The `` N`` naming each prior image's study when there are several priors and their counts add up."""
    if len(priors) < 2 or sum(prior.images for prior in priors) != count:
        return [""] * count
    return [f" {number}" for number, prior in enumerate(priors, start=1) for _ in range(prior.images)]
