"""Versioned prompt templates per modality and body part.

A template asks the model for a structured draft (findings, each with the
images it rests on; impression; limitations) as one JSON object.  Every draft
records the template's key (``name/vN``), so a change of wording is a new
version and drafts stay comparable per prompt version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.draft import clean

#: Longest clinical question quoted in a prompt (it is untrusted text from the referrer).
MAX_QUESTION_CHARS = 500

#: The JSON layout every template asks for (the parser also accepts plain sections).
OUTPUT_FORMAT = (
    "Answer with one JSON object and nothing else, in this layout:\n"
    '{"findings": [{"text": "<one finding>", "images": [<image numbers it is seen on>]}], '
    '"impression": "<one or two sentences>", '
    '"limitations": "<what limits this reading, e.g. images not seen, technique>"}\n'
    "Image numbers are the numbers given above (1 is the first image). "
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
        1,
        "CT",
        ("CHEST", "LUNG", "THORAX"),
        "These are axial slices of a chest CT, in order from head to feet, shown in lung and mediastinal windows. "
        "Describe lungs, airways, pleura, mediastinum, heart and great vessels, and bones in view.",
    ),
    PromptTemplate(
        "ct-head",
        1,
        "CT",
        ("HEAD", "BRAIN", "SKULL"),
        "These are axial slices of a head CT in a brain window, in order from skull base to vertex. "
        "Describe haemorrhage, infarction, mass effect, ventricles, extra-axial spaces and bones.",
    ),
    PromptTemplate(
        "ct",
        1,
        "CT",
        (),
        "These are slices of a CT study, in order along the scan. Describe the relevant findings by organ.",
    ),
    PromptTemplate(
        "mr",
        1,
        "MR",
        (),
        "These are images of an MR study. Describe the relevant findings by structure, noting the sequence where "
        "it can be told.",
    ),
    PromptTemplate(
        "radiograph-chest",
        1,
        None,
        ("CHEST", "THORAX", "LUNG"),
        "These are chest radiographs. Describe lines and tubes, lungs, pleura, heart size, mediastinum and bones.",
    ),
    PromptTemplate(
        "general",
        1,
        None,
        (),
        "These are medical images from one study. Describe the relevant findings.",
    ),
)


def select_template(modality: str | None, body_part: str | None) -> PromptTemplate:
    """Return the first template that applies to the modality and body part (the last one applies to everything)."""
    return next(t for t in TEMPLATES if t.matches(modality, body_part))


class UnknownPrompt(LookupError):
    """A job names a prompt template that does not exist (a permanent failure); the message lists the names."""


def template_names() -> tuple[str, ...]:
    """Return the names of the prompt templates (``ct-chest``, ``general`` ...), in the order they are tried."""
    return tuple(t.name for t in TEMPLATES)


def template_named(name: str) -> PromptTemplate:
    """Return the current template of this name (a second opinion's prompt override).

    Raises
    ------
    UnknownPrompt
        No template has this name; the message lists the names there are.
    """
    for template in TEMPLATES:
        if template.name == name:
            return template
    raise UnknownPrompt(f"unknown prompt {name!r}: the prompt templates are {', '.join(template_names())}")


def render_prompt(template: PromptTemplate, image_labels: Sequence[str], clinical_question: str | None = None) -> str:
    """Write the user prompt: numbered images, the task, the clinical question, the output format.

    ``image_labels`` has one short label per image, in the order the images are given (no patient
    data); ``clinical_question`` is the referrer's question (from a telemedicine upload), quoted as
    untrusted text.
    """
    lines = [f"Image {index}: {label}" for index, label in enumerate(image_labels, start=1)]
    lines.append("")
    lines.append(template.task)
    if clinical_question:
        question = clean(clinical_question, MAX_QUESTION_CHARS, one_line=True).replace('"', "'")
        lines.append(f'The referring clinician asks: "{question}" Address it in the impression.')
    lines.append(OUTPUT_FORMAT)
    return "\n".join(lines)
