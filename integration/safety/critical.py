"""Critical (actionable) findings in a draft: category terms matched with medspaCy's ConText, and the model's urgency.

:data:`DEFAULT_CATEGORIES` start from the commonly used ACR actionable-findings categories (Larson et al.,
JACR 2014; the ones that need a call within minutes to hours): tension or new pneumothorax, intracranial
haemorrhage, free intraperitoneal air, acute aortic dissection, pulmonary embolism, malpositioned lines and
tubes, acute stroke / large vessel occlusion, a ruptured aneurysm, brain herniation, spinal cord
compression, testicular or ovarian torsion, ectopic pregnancy and bowel ischaemia.  A hospital replaces
them with ``PACSVLM_CRITICAL_CATEGORIES``.  Each term is matched case-insensitively as a phrase, in British
and American spelling (``haemorrhage``/``hemorrhage``, ``oesophagus``/``esophagus``, ``ischaemia``).

:func:`match_critical` runs each finding's text and the impression (finding 0) through one medspaCy
pipeline (PyRuSH sentences, a target matcher with a rule per term labelled with its category's code,
ConText).  A match is critical unless ConText marks it negated ("No pneumothorax", "evaluate for ..."),
historical ("history of"), hypothetical ("if ...") or of the family; an uncertain one ("possible",
"suspicious for", "cannot exclude", "rule out") is critical and its phrase says "possible".  ConText's
default English rules are kept and :data:`EXTRA_CONTEXT_RULES` add the wordings of radiology reports
they miss (each has a test): "cannot (be entirely) excluded", "unable to exclude", "?", "suspected" as
uncertain; "is not seen / identified", "is no longer seen", "is absent", ": none", "has resolved" as
negated, reaching back only a few words ("pneumothorax with absent lung markings" stays critical).  A
ConText modifier inside a term (the "free" of "free air") modifies nothing.

A finding whose schema ``urgency`` is ``critical`` is critical from that field (source ``urgency``, or
``both`` when its text matched too; with no category matched: code :data:`MODEL_CODE`).

medspaCy is imported only when a draft is first matched (about a second), and its pipeline built once per
process per category list, under a lock.  PyRuSH logs each sentence's words through loguru at DEBUG: those
loggers are disabled before every match, because the text is patient data.

Not handled: a critical finding the terms do not name (a hospital adds terms), severity ("small stable
pneumothorax" is critical all the same), comparisons ("pneumothorax, unchanged" is critical), a bare
post-negation ("pneumothorax absent." is critical: too ambiguous to trust), and ConText's own choices
("evaluate for X" reads as negated, "rule out X" as uncertain).
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from integration.draft_checks import CHECK_TEXT_LIMITS, CriticalMatch
from integration.findings import Document, Finding
from integration.safety_settings import CriticalCategory

#: Code and label of a finding the model's urgency field called critical when no category matched.
MODEL_CODE = "model-critical"
MODEL_LABEL = "Critical per model"
#: How an uncertain match's phrase begins.
POSSIBLE = "possible"
#: The loguru loggers of medspaCy's components that log document text (disabled before first use).
QUIET_LOGGERS = ("PyRuSH", "medspacy", "quickumls")
#: The pipeline's components, as medspaCy names them.
PIPELINE = ("medspacy_pyrush", "medspacy_target_matcher", "medspacy_context")
#: ConText attributes that make a match not critical.
NOT_CRITICAL = ("is_negated", "is_historical", "is_hypothetical", "is_family")

_LINES_AND_TUBES = [
    "malpositioned",
    "malposition",
    "misplaced tube",
    "misplaced catheter",
    "endobronchial intubation",
    "right mainstem intubation",
    "right main bronchus intubation",
    "oesophageal intubation",
    *(
        f"{tube} in the {place}"
        for tube in ("endotracheal tube", "ET tube", "ETT")
        for place in (
            "right main bronchus",
            "right mainstem bronchus",
            "right main stem bronchus",
            "left main bronchus",
            "left mainstem bronchus",
            "oesophagus",
        )
    ),
    *(
        f"{tube} in the {place}"
        for tube in ("nasogastric tube", "NG tube", "feeding tube", "orogastric tube")
        for place in (
            "airway",
            "trachea",
            "bronchus",
            "right main bronchus",
            "left main bronchus",
            "lung",
            "pleural space",
        )
    ),
]

#: The commonly used ACR actionable-findings categories (code, label, terms).
DEFAULT_CATEGORIES: tuple[CriticalCategory, ...] = tuple(
    CriticalCategory(code=code, label=label, terms=terms)
    for code, label, terms in (
        ("pneumothorax", "Pneumothorax", ["pneumothorax", "pneumothoraces", "tension pneumothorax"]),
        (
            "intracranial-haemorrhage",
            "Intracranial haemorrhage",
            [
                "intracranial haemorrhage",
                "intracerebral haemorrhage",
                "intraparenchymal haemorrhage",
                "intraventricular haemorrhage",
                "subarachnoid haemorrhage",
                "subdural haemorrhage",
                "subdural haematoma",
                "epidural haematoma",
                "extradural haematoma",
                "haemorrhagic stroke",
                "brain haemorrhage",
            ],
        ),
        (
            "free-air",
            "Free intraperitoneal air",
            ["free air", "free intraperitoneal air", "free intraperitoneal gas", "free gas", "pneumoperitoneum"],
        ),
        (
            "aortic-dissection",
            "Aortic dissection",
            ["aortic dissection", "dissection of the aorta", "type A dissection", "type B dissection", "intimal flap"],
        ),
        (
            "pulmonary-embolism",
            "Pulmonary embolism",
            [
                "pulmonary embolism",
                "pulmonary emboli",
                "pulmonary embolus",
                "saddle embolus",
                "pulmonary thromboembolism",
            ],
        ),
        ("malpositioned-line", "Malpositioned line or tube", _LINES_AND_TUBES),
        (
            "acute-stroke",
            "Acute stroke or large vessel occlusion",
            [
                "acute stroke",
                "acute infarct",
                "acute infarction",
                "acute ischaemic stroke",
                "acute cerebral infarct",
                "acute cerebral infarction",
                "large vessel occlusion",
                "hyperdense MCA sign",
                "dense MCA sign",
            ],
        ),
        (
            "ruptured-aneurysm",
            "Ruptured or leaking aneurysm",
            ["ruptured aneurysm", "ruptured aortic aneurysm", "leaking aneurysm", "aneurysm rupture", "aortic rupture"],
        ),
        (
            "brain-herniation",
            "Brain herniation",
            [
                "brain herniation",
                "transtentorial herniation",
                "subfalcine herniation",
                "tonsillar herniation",
                "uncal herniation",
            ],
        ),
        ("cord-compression", "Spinal cord compression", ["cord compression", "spinal cord compression"]),
        ("torsion", "Testicular or ovarian torsion", ["testicular torsion", "ovarian torsion", "adnexal torsion"]),
        ("ectopic-pregnancy", "Ectopic pregnancy", ["ectopic pregnancy", "tubal pregnancy"]),
        (
            "bowel-ischaemia",
            "Bowel ischaemia",
            ["bowel ischaemia", "mesenteric ischaemia", "pneumatosis intestinalis", "portal venous gas"],
        ),
    )
)


def _rule(literal: str, category: str, direction: str, *words: Any, max_scope: int | None = None) -> dict[str, Any]:
    """A ConText rule: ``words`` are token patterns (a str: one word; a list: any of its words; a tuple: optional)."""
    pattern = []
    for word in words:
        optional = isinstance(word, tuple)
        choices = word[0] if optional else word
        token: dict[str, Any] = {"LOWER": {"IN": list(choices)} if isinstance(choices, list) else choices}
        pattern.append({**token, "OP": "?"} if optional else token)
    return {
        "literal": literal,
        "category": category,
        "direction": direction,
        "pattern": pattern,
        "max_scope": max_scope,
    }


#: Optional words of a rule: a copula ("is not seen"), a negation ("can not"), an adverb ("entirely excluded").
_COPULA = (["is", "are", "was", "were"],)
_NOT = (["not", "n't"],)
_ADVERB = (["entirely", "completely", "definitely", "fully", "totally", "confidently", "reliably"],)
_SEEN = [
    "seen",
    "identified",
    "present",
    "demonstrated",
    "visualized",
    "visualised",
    "evident",
    "appreciated",
    "detected",
]
_POSSIBLE, _NEGATED = "POSSIBLE_EXISTENCE", "NEGATED_EXISTENCE"
#: How many tokens back a post-negation reaches ("pneumothorax is not seen"; not "pneumothorax, and the effusion
#: is not seen", nor "pneumothorax with absent lung markings").
_NEAR = 4
#: Radiology wordings ConText's default English rules miss; each is longer than the default rule it overlaps,
#: so it wins medspaCy's longest-match pruning ("is not excluded" over "is not").
EXTRA_CONTEXT_RULES = (
    _rule("cannot exclude", _POSSIBLE, "FORWARD", ["cannot", "can"], _NOT, _ADVERB, ["exclude", "rule"], (["out"],)),
    _rule("unable to exclude", _POSSIBLE, "FORWARD", ["unable", "impossible", "difficult"], "to", ["exclude", "rule"]),
    _rule("cannot be excluded", _POSSIBLE, "BACKWARD", ["cannot", "can"], _NOT, "be", _ADVERB, ["excluded", "ruled"]),
    _rule("is not excluded", _POSSIBLE, "BACKWARD", _COPULA, ["not", "n't"], (["been"],), _ADVERB, "excluded"),
    _rule(
        "is suspected",
        _POSSIBLE,
        "BACKWARD",
        ["is", "are", "was", "were"],
        ["suspected", "questioned", "possible", "likely"],
    ),
    _rule("suspected", _POSSIBLE, "FORWARD", ["suspected", "suspect", "suspicion", "questionable", "probable"]),
    _rule("concerning for", _POSSIBLE, "FORWARD", ["concerning", "suggestive", "compatible"], ["for", "of", "with"]),
    _rule("may represent", _POSSIBLE, "FORWARD", ["may", "might", "could"], ["represent", "reflect", "indicate"]),
    _rule("question mark", _POSSIBLE, "BACKWARD", "?"),
    _rule("is not seen", _NEGATED, "BACKWARD", _COPULA, ["not", "n't"], (["been"],), _SEEN, max_scope=_NEAR),
    _rule("no longer seen", _NEGATED, "BACKWARD", _COPULA, "no", "longer", [*_SEEN, "visible"], max_scope=_NEAR),
    _rule("is absent", _NEGATED, "BACKWARD", ["is", "are", "was", "were"], ["absent", "excluded"], max_scope=_NEAR),
    _rule(
        "colon absent",
        _NEGATED,
        "BACKWARD",
        [":", "-", "\u2013"],
        ["absent", "none", "no", "excluded"],
        max_scope=_NEAR,
    ),
    _rule("has resolved", _NEGATED, "BACKWARD", ["has", "have"], (["since", "now"],), "resolved", max_scope=_NEAR),
    _rule("interval resolution of", _NEGATED, "FORWARD", (["interval"],), "resolution", "of"),
)

#: American to British spelling at a word's start or stem, and back (``hemorrhage``, ``ischemia``, ``esophagus``).
_TO_BRITISH = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\bhem(?=[aeo])", "haem"),
        (r"ischem", "ischaem"),
        (r"\besoph", "oesoph"),
        (r"\bedem", "oedem"),
    )
)
_TO_AMERICAN = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in ((r"haem", "hem"), (r"ischaem", "ischem"), (r"oesoph", "esoph"), (r"oedem", "edem"))
)
_lock = threading.Lock()
_pipelines: dict[tuple[tuple[str, tuple[str, ...]], ...], Any] = {}


def match_critical(
    document: Document, categories: Sequence[CriticalCategory] | None = None
) -> tuple[CriticalMatch, ...]:
    """Return the draft's critical matches: findings (1-based) and the impression (0), in order.

    Parameters
    ----------
    document : Document
        The draft.
    categories : sequence of CriticalCategory, optional
        The categories to match (``settings.critical_categories``); None: :data:`DEFAULT_CATEGORIES`.

    Returns
    -------
    tuple of CriticalMatch
        At most one per finding and category: source ``text`` (affirmed or uncertain in the text; an
        uncertain one's phrase starts with "possible"), ``both`` when the finding's urgency is also
        ``critical``, ``urgency`` (code :data:`MODEL_CODE`) for a finding the model called critical with no
        category in its text.  Negated, historical, hypothetical and family mentions are not matched.
    """
    categories = DEFAULT_CATEGORIES if categories is None else tuple(categories)
    labels = {category.code: category.label for category in categories}
    texts = [finding.text for finding in document.findings] + [document.impression]
    # medspaCy (seconds to build per process) only runs when some text names a term at all: its rules are
    # literal phrases matched case-insensitively, so a text without any of them as a substring matches nothing.
    needed = bool(categories) and _names_a_term(texts, categories)
    found = _matches(texts, categories) if needed else [[] for _ in texts]
    matches: list[CriticalMatch] = []
    for number, (finding, phrases) in enumerate(zip((*document.findings, None), found, strict=True), start=1):
        number = number if finding is not None else 0
        urgent = isinstance(finding, Finding) and finding.urgency == "critical"
        for code, phrase in phrases:
            matches.append(CriticalMatch(number, code, labels[code], "both" if urgent else "text", phrase))
        if urgent and not phrases:
            matches.append(CriticalMatch(number, MODEL_CODE, MODEL_LABEL, "urgency", ""))
    return tuple(matches)


def _names_a_term(texts: Sequence[str], categories: Sequence[CriticalCategory]) -> bool:
    """Whether any text holds any spelling of any term (lower case, white space as one space)."""
    lowered = [" ".join(text.lower().split()) for text in texts]
    return any(
        spelling in text
        for category in categories
        for term in category.terms
        for spelling in spellings(term)
        for text in lowered
    )


def prepare(categories: Sequence[CriticalCategory] | None = None) -> None:
    """Import medspaCy and build the pipeline now (a worker's start), rather than on the first draft."""
    quiet_medspacy_logs()
    _pipeline(DEFAULT_CATEGORIES if categories is None else tuple(categories))


def _matches(texts: Sequence[str], categories: Sequence[CriticalCategory]) -> list[list[tuple[str, str]]]:
    """Per text, (code, phrase) of each category matched as critical, first mention of each category."""
    quiet_medspacy_logs()  # every time: a caller may have enabled loguru's loggers since the pipeline was built
    nlp = _pipeline(categories)
    found = []
    with _lock, warnings.catch_warnings():  # spaCy pipelines are not documented as thread-safe; texts are short
        warnings.filterwarnings("ignore", message=r"\[W036\]")  # the target matcher has phrase rules only
        docs = [nlp(text) if text.strip() else None for text in texts]
    for doc in docs:
        phrases: dict[str, str] = {}
        for entity in doc.ents if doc is not None else ():
            if entity.label_ in phrases or any(getattr(entity._, name) for name in NOT_CRITICAL):
                continue
            words = " ".join(entity.text.split())
            if entity._.is_uncertain:
                lowered = words[:1].lower() + words[1:] if words[1:2].islower() else words
                words = f"{POSSIBLE} {lowered}"
            phrase = words
            phrases[entity.label_] = phrase[: CHECK_TEXT_LIMITS["phrase"]].strip()
        found.append(list(phrases.items()))
    return found


def _pipeline(categories: Sequence[CriticalCategory]) -> Any:
    """The medspaCy pipeline matching ``categories``: built on first use, once per process per category list."""
    key = tuple((category.code, tuple(category.terms)) for category in categories)
    with _lock:
        if key not in _pipelines:
            _pipelines[key] = _build(categories)
        return _pipelines[key]


def quiet_medspacy_logs() -> None:
    """Disable the loguru loggers of medspaCy's components: they log sentences, which are patient data."""
    from loguru import logger

    for name in QUIET_LOGGERS:
        logger.disable(name)


def _build(categories: Sequence[CriticalCategory]) -> Any:
    quiet_medspacy_logs()
    with warnings.catch_warnings():  # pysbd (a medspaCy dependency) has invalid escapes in its regexes
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        import medspacy  # type: ignore[import-untyped]
        from medspacy.context import ConTextRule  # type: ignore[import-untyped]
        from medspacy.ner import TargetRule  # type: ignore[import-untyped]

    nlp = medspacy.load(medspacy_enable=list(PIPELINE))
    context = nlp.get_pipe("medspacy_context")
    context.add([ConTextRule(**rule) for rule in EXTRA_CONTEXT_RULES])
    # A modifier inside a target is part of the term: "free" (ConText's "pain free", backward negation) must not
    # negate the pneumothorax before "free air".
    context.prune_on_target_overlap = True
    rules = [
        TargetRule(spelling, category.code)
        for category in categories
        for term in category.terms
        for spelling in spellings(term)
    ]
    nlp.get_pipe("medspacy_target_matcher").add(rules)
    return nlp


def spellings(term: str) -> list[str]:
    """A term in its British and American spellings, lower case, spaces normalised (``haemorrhage``, ``hemorrhage``)."""
    words = " ".join(term.lower().split())
    british = words
    for pattern, replacement in _TO_BRITISH:
        british = pattern.sub(replacement, british)
    american = british
    for pattern, replacement in _TO_AMERICAN:
        american = pattern.sub(replacement, american)
    return sorted({words, british, american})
