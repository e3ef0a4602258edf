"""Running a model over evaluation items in batches, and scoring what it says.

VQA items are asked with :data:`VQA_PROMPT` (one image, the question, "answer briefly"); report
pairs without a draft are drafted with the service's own ``general`` report template, exactly as a
study would be.  Requests go to ``backend.generate`` in batches of ``batch_size``; images are opened
one batch at a time.  Model output is untrusted text: it is only scored and written to JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from models.backend import GenerationRequest, VisionLanguageBackend
from models.draft import clean, parse_draft
from models.evaluation.datasets import DatasetError, ReportPair, VqaItem
from models.evaluation.metrics import RougeL, closed_correct, mean, open_recall, rouge_l
from models.prompts import SYSTEM_PROMPT, PromptTemplate, render_prompt, template_named

#: The evaluation prompt for VQA; its key (``eval-vqa/v1``) is written with every prediction.
VQA_PROMPT = PromptTemplate(
    "eval-vqa",
    1,
    None,
    (),
    "Look at the medical image and answer the question with a single word or a short phrase. "
    "For a yes/no question, answer yes or no.",
)
#: Name of the report template used to draft reports from images.
REPORT_TEMPLATE = "general"
#: Longest question quoted in a VQA prompt.
MAX_QUESTION_CHARS = 1000

#: Takes two findings documents (``{"findings": [{"text": ...}], "impression": ...}``), returns 0..1.
FindingAgreement = Callable[[Mapping[str, Any], Mapping[str, Any]], float]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def vqa_prompt(question: str) -> str:
    """Write the VQA prompt: the instruction, then ``Question: ...`` (control characters removed, length capped)."""
    return f"{VQA_PROMPT.task}\nQuestion: {clean(question, MAX_QUESTION_CHARS, one_line=True)}"


def open_images(paths: Sequence[Path]) -> tuple[Image.Image, ...]:
    """Open image files as RGB images, fully read, in order.

    Raises
    ------
    DatasetError
        A file is not an image PIL can read.
    """
    opened = []
    for path in paths:
        try:
            with Image.open(path) as image:
                opened.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return tuple(opened)


def check_images(paths: Sequence[Path]) -> None:
    """Check that every file is an image PIL can read, before any model is loaded.

    Raises
    ------
    DatasetError
        The first file that is not a readable image.
    """
    for path in dict.fromkeys(paths):
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from None


@dataclass(frozen=True)
class VqaPrediction:
    """The model's answer to one VQA item, scored.

    Attributes
    ----------
    prediction : str
        The model's answer (untrusted text).
    correct : bool or None
        Closed-ended items: whether the answer is right.
    recall : float or None
        Open-ended items: token recall of the reference answer.
    """

    item: VqaItem
    prediction: str
    correct: bool | None
    recall: float | None

    def as_json(self, set_name: str) -> dict[str, Any]:
        """Return the line written to the results file."""
        return {
            "set": set_name,
            "id": self.item.item_id,
            "image": self.item.image.name,
            "question": self.item.question,
            "answer": self.item.answer,
            "answer_type": "closed" if self.item.closed else "open",
            "prediction": self.prediction,
            "correct": self.correct,
            "recall": self.recall,
            "prompt": VQA_PROMPT.key,
        }


@dataclass(frozen=True)
class ReportScore:
    """A draft scored against its reference.

    Attributes
    ----------
    draft : str
        The draft text scored (the model's draft flattened to text, or the given draft).
    rouge : RougeL
        ROUGE-L of the draft against the reference.
    agreement : float or None
        Finding-level agreement (0..1); None when no agreement function was given.
    prompt : str or None
        Key of the report template when the model drafted the report.
    """

    pair: ReportPair
    draft: str
    rouge: RougeL
    agreement: float | None
    prompt: str | None

    def as_json(self, set_name: str) -> dict[str, Any]:
        """Return the line written to the results file."""
        return {
            "set": set_name,
            "id": self.pair.item_id,
            "images": [path.name for path in self.pair.images],
            "draft": self.draft,
            "reference": self.pair.reference,
            "rouge_l": round(self.rouge.fmeasure, 4),
            "rouge_l_precision": round(self.rouge.precision, 4),
            "rouge_l_recall": round(self.rouge.recall, 4),
            "agreement": None if self.agreement is None else round(self.agreement, 4),
            "prompt": self.prompt,
        }


@dataclass(frozen=True)
class SetScores:
    """The scores of one evaluation set (a row of the results table).

    Attributes
    ----------
    n : int
        Items scored.
    closed_n, open_n : int
        Closed- and open-ended VQA items.
    closed_accuracy, open_recall, rouge_l, agreement : float or None
        Means over the items they apply to; None when none do.
    """

    name: str
    n: int
    closed_n: int = 0
    open_n: int = 0
    closed_accuracy: float | None = None
    open_recall: float | None = None
    rouge_l: float | None = None
    agreement: float | None = None


def _batches(count: int, batch_size: int) -> list[range]:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def run_vqa(
    backend: VisionLanguageBackend,
    items: Sequence[VqaItem],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    progress: Callable[[list[VqaPrediction]], None] | None = None,
) -> list[VqaPrediction]:
    """Ask the model every question and score the answers; one prediction per item, in order.

    Parameters
    ----------
    batch_size : int
        Requests per ``backend.generate`` call.
    max_new_tokens : int
        Answer length cap.
    progress : callable, optional
        Called with each batch's scored predictions as soon as they are in (to write them at once).
    """
    predictions: list[VqaPrediction] = []
    for batch in _batches(len(items), batch_size):
        done = len(predictions)
        requests = [
            GenerationRequest(
                request_id=f"vqa-{index}",
                prompt=vqa_prompt(items[index].question),
                images=open_images([items[index].image]),
                max_new_tokens=max_new_tokens,
            )
            for index in batch
        ]
        for index, result in zip(batch, backend.generate(requests), strict=True):
            item = items[index]
            text = result.text.strip()
            if item.closed:
                predictions.append(VqaPrediction(item, text, closed_correct(text, item.answer), None))
            else:
                predictions.append(VqaPrediction(item, text, None, open_recall(text, item.answer)))
        if progress is not None:
            progress(predictions[done:])
    return predictions


def _sentences(text: str, n_images: int) -> tuple[list[str], str]:
    """A report as the model contract parses it (:func:`models.draft.parse_draft`): finding sentences, impression."""
    parsed = parse_draft(text, n_images)
    sentences = [
        sentence.strip()
        for finding in parsed.findings
        for sentence in _SENTENCE_END.split(finding.text)
        if sentence.strip(" -*\u2022")
    ]
    return sentences, parsed.impression


def findings_document(text: str, n_images: int = 0) -> dict[str, Any]:
    """Return a report's findings JSON, one finding per sentence (for finding-level agreement).

    Parameters
    ----------
    text : str
        A report: the model's JSON draft, sections (``Findings:``/``Impression:``) or plain prose.
    n_images : int
        Images the model saw (for the draft parser's image references).

    Returns
    -------
    dict
        ``{"findings": [{"text": ...}], "impression": ...}`` (the stored layout, which
        :data:`FindingAgreement` functions read); prose without sections is all findings.
    """
    return _document(*_sentences(text, n_images))


def _document(sentences: Sequence[str], impression: str) -> dict[str, Any]:
    return {"findings": [{"text": sentence} for sentence in sentences], "impression": impression}


def _score_pair(pair: ReportPair, draft: str, drafted: bool, compare: FindingAgreement | None) -> ReportScore:
    sentences, impression = _sentences(draft, len(pair.images))
    text = " ".join(part for part in [*sentences, impression] if part) if drafted else draft
    reference = findings_document(pair.reference)
    agreement = None if compare is None else compare(_document(sentences, impression), reference)
    prompt = template_named(REPORT_TEMPLATE).key if drafted else None
    return ReportScore(pair, text, rouge_l(text, pair.reference), agreement, prompt)


def run_reports(
    backend: VisionLanguageBackend | None,
    pairs: Sequence[ReportPair],
    *,
    compare: FindingAgreement | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 512,
    progress: Callable[[list[ReportScore]], None] | None = None,
) -> list[ReportScore]:
    """Draft the reports that have no draft, and score every draft against its reference.

    Pairs are taken ``batch_size`` at a time, in file order; those without a draft go to the model
    in one ``backend.generate`` call per batch. Returns one score per pair, in order.

    Parameters
    ----------
    backend : VisionLanguageBackend or None
        The model; may be None when every pair carries its draft.
    compare : callable, optional
        Finding-level agreement of two findings documents (0..1).
    max_new_tokens : int
        Draft length cap.
    progress : callable, optional
        Called with each batch's scores as soon as they are in.

    Raises
    ------
    ValueError
        Some pairs need drafting and no backend is given.
    """
    if backend is None and any(pair.draft is None for pair in pairs):
        raise ValueError("some pairs have images to draft from but no model is configured")
    template = template_named(REPORT_TEMPLATE)
    scores: list[ReportScore] = []
    for batch in _batches(len(pairs), batch_size):
        to_draft = [index for index in batch if pairs[index].draft is None]
        drafts: dict[int, str] = {}
        if to_draft and backend is not None:
            requests = [
                GenerationRequest(
                    request_id=f"report-{index}",
                    prompt=render_prompt(template, [f"image {n}" for n in range(1, len(pairs[index].images) + 1)]),
                    images=open_images(pairs[index].images),
                    system_prompt=SYSTEM_PROMPT,
                    max_new_tokens=max_new_tokens,
                )
                for index in to_draft
            ]
            for index, result in zip(to_draft, backend.generate(requests), strict=True):
                drafts[index] = result.text
        done = len(scores)
        for index in batch:
            pair = pairs[index]
            drafted = pair.draft is None
            scores.append(_score_pair(pair, drafts[index] if drafted else pair.draft or "", drafted, compare))
        if progress is not None:
            progress(scores[done:])
    return scores


def vqa_scores(name: str, predictions: Sequence[VqaPrediction]) -> SetScores:
    """Summarise a VQA set's predictions: closed-ended accuracy and open-ended recall (means)."""
    closed = [float(p.correct) for p in predictions if p.correct is not None]
    recalls = [p.recall for p in predictions if p.recall is not None]
    return SetScores(name, len(predictions), len(closed), len(recalls), mean(closed), mean(recalls))


def report_scores(name: str, scores: Sequence[ReportScore]) -> SetScores:
    """Summarise a set of report pairs: mean ROUGE-L F-measure and mean finding-level agreement."""
    agreements = [s.agreement for s in scores if s.agreement is not None]
    return SetScores(name, len(scores), rouge_l=mean(s.rouge.fmeasure for s in scores), agreement=mean(agreements))
