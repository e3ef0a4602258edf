"""Contradictions between a draft and its study's header, flagged per finding for the reviewer to dismiss or fix.

:func:`check_consistency` compares each finding (and the impression, as finding 0) with
:class:`~integration.safety.facts.StudyFacts` and returns at most one
:class:`~integration.draft_checks.Check` per finding and kind:

``laterality``
    The finding's schema laterality, or the words left/right in its text (one side only; "bilateral",
    "both" or both words: nothing), against the side of the images it cites (Image Laterality, else
    Laterality, else a sided view code such as ``LMLO``) when all of them have the same one, or of the
    study's images when it cites none and all of those agree.  Cardiac chambers, liver lobes and
    directions ("to the left", "shift") are not sides.
``sex``
    Sex-specific anatomy (prostate, testis, scrotum, seminal vesicles / uterus, ovary, cervix,
    endometrium, fallopian tube, vagina, placenta) against Patient's Sex ``M``/``F`` (``O`` or none: nothing).
``region``
    Organs of a curated few families (brain, lung, abdominal organs, pelvic organs, the lower limb), in the
    text or the schema's body region, that the study's region cannot show: brain on a CHEST study, lung on
    a KNEE study.  The study's region comes from Body Part Examined and Study Description; a region not in
    the map, a spine, neck or whole-body study, or none at all: nothing.
``modality``
    A sentence that names the current examination as another modality ("on this MRI", "CT shows",
    "the ultrasound demonstrates") while the study has none of it; sentences that compare, recommend or
    suggest ("prior MRI", "recommend CT") are left alone, as are studies of modalities outside the map.
``contrast``
    Contrast mentioned as given ("contrast-enhanced", "post-contrast", "after intravenous contrast",
    "gadolinium"; "enhancing" and "enhancement" on CT or MR only) when no file records a Contrast/Bolus
    Agent and no description says contrast; a sentence that says without contrast, or recommends, is left
    alone.
``image``
    A cited image number the model was not shown: in the finding's images, in the raw citations (``cited``:
    the model's answer before the parser dropped them, see :func:`cited_in_answer`) or written in the text
    ("image 7").

Not checked: severity, measurements, dates, negations of anatomy ("uterus absent" is still a mention), a
laterality the header does not record, and anything a finding says about a prior study's images.
Messages name the contradiction with words of these lists, image numbers and header codes only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence

from integration.draft_checks import CHECK_TEXT_LIMITS, Check
from integration.findings import Document, Finding
from integration.safety.facts import StudyFacts

_SIDE_WORDS = {"left": "L", "right": "R"}
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
#: "left"/"right" that name no side of the body: heart chambers, liver lobes, directions.
_NOT_A_SIDE = re.compile(
    r"\b(?:left|right)[\s-]+(?:sided\s+)?(?:heart|ventric\w*|atri\w*|bundle|coronary|main\s+coronary|lobe\s+of\s+the\s+liver"
    r"|hepatic\s+lobe|anterior\s+descending|circumflex|colic|colon|upper\s+quadrant|lower\s+quadrant)"
    r"|\b(?:to|towards?)\s+the\s+(?:left|right)\b|\b(?:shift\w*|deviat\w*|displac\w*)\s+(?:\w+\s+){0,3}(?:left|right)\b",
    re.IGNORECASE,
)
_BOTH_SIDES = re.compile(
    r"\b(?:bilateral\w*|both|either\s+side|left\s+and\s+right|right\s+and\s+left)\b", re.IGNORECASE
)

_MALE = re.compile(
    r"\b(prostat(?:e|ic)|testis|testes|testic(?:le|les|ular)|scrot(?:um|al)|seminal\s+vesicles?|epididym\w*|penis|penile)\b",
    re.I,
)
_FEMALE = re.compile(
    r"\b(uter(?:us|ine)|ovar(?:y|ies|ian)|endometri(?:um|al)|fallopian|vagina[l]?|placenta[l]?|cervix|gravid\s+uterus)\b",
    re.IGNORECASE,
)

#: Organ words by the family the study's region must show.
ORGAN_FAMILIES = {
    "brain": r"brain|cerebr(?:al|um)|cerebell(?:ar|um)|intracranial|brainstem|basal\s+ganglia"
    r"|(?:frontal|temporal|parietal|occipital)\s+lobes?",
    "lung": r"lungs?|pulmonary|pleura[l]?|pneumothorax|mediastin(?:um|al)|(?<!renal\s)hil(?:um|ar)|bronch(?:us|i|ial)",
    "abdomen": r"liver|hepatic|spleen|splenic|pancrea(?:s|tic)|gallbladder|duoden(?:um|al)|appendi(?:x|ceal)"
    r"|colon|colonic",
    "pelvis": r"prostat(?:e|ic)|uter(?:us|ine)|ovar(?:y|ies|ian)|urinary\s+bladder|bladder|rectum|rectal",
    "limb": r"knees?|ankles?|tibia[l]?|fibula[r]?|patella[r]?|menisc(?:us|i|al)|calcane(?:us|al)|cruciate",
}
_ORGANS = {family: re.compile(rf"\b(?:{words})\b", re.IGNORECASE) for family, words in ORGAN_FAMILIES.items()}
#: A study's region -> the organ families it can show.
SHOWS = {
    "head": {"brain"},
    "chest": {"lung", "abdomen"},
    "abdomen": {"lung", "abdomen", "pelvis"},
    "pelvis": {"abdomen", "pelvis"},
    "lower limb": {"limb"},
    "upper limb": set(),
    "breast": {"lung", "abdomen"},
}
#: Body Part Examined or description words -> the study's region ("open": a region that may show anything).
_REGION_WORDS = (
    (r"head|brain|skull|cranial|cranium|iac|pituitary|orbits?", "head"),
    (r"chest|thorax|lungs?|cxr|heart|cardiac", "chest"),
    (r"abdomen|abdominal|abd|liver|kidneys?|renal|pancreas", "abdomen"),
    (r"pelvis|pelvic|hips?|bladder|prostate", "pelvis"),
    (r"knee|ankle|foot|feet|tibia|fibula|leg|calf|toes?|lowerlimb|lowerleg", "lower limb"),
    (r"hand|wrist|elbow|forearm|fingers?|thumb|upperlimb", "upper limb"),
    (r"breast|mammo\w*|mammography", "breast"),
    (
        r"spine|spinal|[ctl]spine|cervical|thoracic|lumbar|sacrum|neck|whole|wholebody|body|pet|shoulder|humerus|femur"
        r"|extremity|extremities|arm|skeleton|skeletal",
        "open",
    ),
)
_REGION_PATTERNS = tuple((re.compile(rf"\b(?:{words})\b", re.IGNORECASE), region) for words, region in _REGION_WORDS)
#: Parts of a compound Body Part Examined (``ABDOMENPELVIS``, ``HEADNECK``).
_COMBINED_PARTS = (
    ("CHEST", "chest"),
    ("THORAX", "chest"),
    ("ABD", "abdomen"),
    ("PELV", "pelvis"),
    ("HEAD", "head"),
    ("NECK", "open"),
    ("SPINE", "open"),
    ("BODY", "open"),
)

#: Modality words -> the DICOM Modality codes that make them true.  Acronyms are matched in capitals only.
MODALITY_WORDS = (
    (r"PET(?:/CT|-CT)", {"PT", "CT"}),
    (r"CT|CTA|(?i:computed\s+tomography|CT\s+scan)", {"CT"}),
    (r"MRI|MR|MRA|(?i:magnetic\s+resonance)", {"MR"}),
    (r"(?i:ultrasound|sonograph\w*|sonogram)", {"US"}),
    (r"(?i:radiograph\w*|x-ray|xray|plain\s+film)", {"CR", "DX", "RF", "XA"}),
    (r"(?i:mammogra\w*)", {"MG"}),
    (r"PET", {"PT"}),
)
#: Modalities whose studies the modality check knows (others, e.g. SC or OT only, are left alone).
KNOWN_MODALITIES = frozenset({"CT", "MR", "US", "CR", "DX", "MG", "PT", "NM", "RF", "XA"})
_REFERS = r"(?:this|the\s+current|the\s+present|current|present|on|at)"
_VERBS = r"(?:shows?|demonstrates?|reveals?|images?|examination|exam|study|scan)"
#: Sentences about other examinations: comparisons, recommendations, suggestions.
_OTHER_EXAM = re.compile(
    r"\b(?:prior|previous|previously|compar\w*|recommend\w*|consider\w*|suggest\w*|advis\w*|further|follow-?up|"
    r"dedicated|correlat\w*|could|should|would|may|might|can|if|better|than|outside|earlier|last|old)\b",
    re.IGNORECASE,
)
_CONTRAST = re.compile(
    r"\b(?:contrast[\s-]+enhanced|post[\s-]?contrast|after\s+(?:iv\s+|intravenous\s+)?contrast|following\s+(?:iv\s+|"
    r"intravenous\s+)?contrast|with\s+(?:iv\s+|intravenous\s+)?contrast|intravenous\s+contrast|iv\s+contrast|"
    r"gadolinium|arterial\s+phase|portal\s+venous\s+phase|contrast\s+(?:medium|agent|administration))\b",
    re.IGNORECASE,
)
_ENHANCING = re.compile(r"\b(?:enhanc(?:ing|ement|es))\b", re.IGNORECASE)
_NO_CONTRAST = re.compile(
    r"\b(?:without|no|non|un|pre)[\s-]*(?:iv\s+|intravenous\s+)?(?:contrast|enhanced|enhancing|enhancement)\b"
    r"|\bnoncontrast\b|\bunenhanced\b|\bacoustic\s+enhancement\b|\bthrough[\s-]transmission\b",
    re.IGNORECASE,
)
_IMAGE_REF = re.compile(r"\bimages?\s*#?\s*(\d+(?:\s*(?:,|and|&|-|to)\s*\d+)*)", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")


def check_consistency(
    document: Document,
    facts: StudyFacts,
    images_seen: Collection[int] = (),
    cited: Sequence[Collection[int]] | None = None,
) -> tuple[Check, ...]:
    """Return the contradictions between a draft and its study's header, per finding and kind.

    Parameters
    ----------
    document : Document
        The draft (identifiers already masked).
    facts : StudyFacts
        The study's header facts (:meth:`StudyFacts.read`).
    images_seen : collection of int
        The image numbers the model was shown; empty: those of ``facts.images``.
    cited : sequence of collections of int, optional
        The images each finding cited in the model's raw answer, in finding order (the parser drops those
        it was not shown): see :func:`cited_in_answer`.  None: only numbers written in the texts are checked.

    Returns
    -------
    tuple of Check
        In finding order (the impression's, finding 0, last), at most one per finding and kind.
    """
    seen = frozenset(images_seen) or frozenset(facts.images)
    checks: list[Check] = []
    entries: list[tuple[int, Finding | None, str]] = [(n, f, f.text) for n, f in enumerate(document.findings, 1)]
    if document.impression:
        entries.append((0, None, document.impression))
    for number, finding, text in entries:
        raw = cited[number - 1] if cited is not None and 0 < number <= len(cited) else ()
        messages = {
            "laterality": _laterality(finding, text, facts),
            "sex": _sex(text, facts),
            "region": _region(finding, text, facts),
            "modality": _modality(text, facts),
            "contrast": _contrast(text, facts),
            "image": _images(text, {*raw, *(finding.images if finding is not None else ())}, seen),
        }
        checks.extend(Check(number, kind, _line(message)) for kind, message in messages.items() if message)
    return tuple(checks)


def cited_in_answer(answer: str) -> tuple[tuple[int, ...], ...] | None:
    """The images each finding cited in the model's raw JSON answer (findings without text skipped, as the parser does).

    Returns None when the answer is not a JSON object with a findings list (free text: the numbers written
    in the findings' texts are still checked).
    """
    start, end = answer.find("{"), answer.rfind("}")
    try:
        parsed = json.loads(answer[start : end + 1]) if 0 <= start < end else None
    except ValueError:
        return None
    items = parsed.get("findings") if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        return None
    cited = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            raw = item.get("images")
            numbers = raw if isinstance(raw, list) else [raw] if raw is not None else []
            cited.append(tuple(n for n in numbers if type(n) is int))
        elif isinstance(item, str) and item.strip():
            cited.append(())
    return tuple(cited)


def _laterality(finding: Finding | None, text: str, facts: StudyFacts) -> str:
    side = _finding_side(finding, text)
    if side is None:
        return ""
    word = "left" if side == "L" else "right"
    cited = finding.images if finding is not None else ()
    numbers = [n for n in cited if n in facts.images] if cited else sorted(facts.images)
    if not numbers or (cited and len(numbers) != len(cited)):
        return ""
    sides = {facts.images[n].side for n in numbers}
    known = {found for found in sides if found is not None}
    if None in sides or len({found[0] for found in known}) != 1:
        return ""
    image_side, source = min(known)
    if image_side == side:
        return ""
    if cited:
        names = f"image {numbers[0]} is" if len(numbers) == 1 else f"images {_numbers(numbers)} are"
        return f"says {word}; {names} {image_side} ({source})"
    return f"says {word}; the study's images are all {image_side} ({source})"


def _finding_side(finding: Finding | None, text: str) -> str | None:
    if finding is not None and finding.laterality in ("bilateral", "midline"):
        return None
    if finding is not None and finding.laterality in ("left", "right"):
        return _SIDE_WORDS[finding.laterality]
    if _BOTH_SIDES.search(text):
        return None
    words = {_SIDE_WORDS[m.lower()] for m in _SIDE.findall(_NOT_A_SIDE.sub(" ", text))}
    return words.pop() if len(words) == 1 else None


def _sex(text: str, facts: StudyFacts) -> str:
    other = {"F": _MALE, "M": _FEMALE}.get(facts.sex or "")
    match = other.search(text) if other else None
    if match is None:
        return ""
    sex = "female" if facts.sex == "F" else "male"
    return f"mentions {' '.join(match.group(0).lower().split())}; Patient's Sex is {facts.sex} ({sex})"


def _region(finding: Finding | None, text: str, facts: StudyFacts) -> str:
    regions, source = _study_regions(facts)
    if not regions or "open" in regions:
        return ""
    shown = set().union(*(SHOWS[region] for region in regions))
    words = f"{text} {finding.region or ''}" if finding is not None else text
    region_of_finding = _study_regions_of(finding.region) if finding is not None and finding.region else set()
    for family, pattern in _ORGANS.items():
        if family in shown:
            continue
        match = pattern.search(words)
        if match is not None:
            return f"mentions {' '.join(match.group(0).lower().split())}; the study is {_regions(regions)} ({source})"
    for region in sorted(region_of_finding - {"open"}):
        if not SHOWS.get(region, set()) & shown and region not in regions:
            return f"body region {region}; the study is {_regions(regions)} ({source})"
    return ""


def _study_regions(facts: StudyFacts) -> tuple[set[str], str]:
    """The study's regions and where they were read: Body Part Examined first, else the description."""
    regions: set[str] = set()
    for part in facts.body_parts:
        found = _study_regions_of(part) or {region for key, region in _COMBINED_PARTS if key in part}
        regions |= found or {"open"}  # a body part not in the map: the region is unknown
    if regions:
        return regions, "Body Part Examined"
    for description in facts.descriptions:
        regions |= _study_regions_of(description)
    return regions, "Study Description"


def _study_regions_of(text: str) -> set[str]:
    return {region for pattern, region in _REGION_PATTERNS if pattern.search(text.replace("_", " "))}


def _regions(regions: Iterable[str]) -> str:
    return " and ".join(sorted(regions)).upper()


def _modality(text: str, facts: StudyFacts) -> str:
    if not facts.modalities & KNOWN_MODALITIES:
        return ""
    for sentence in _sentences(text):
        if _OTHER_EXAM.search(sentence):
            continue
        for words, codes in MODALITY_WORDS:
            pattern = rf"\b{_REFERS}\s+(?:{words})\b|\b(?:{words})\s+{_VERBS}\b"
            match = re.search(pattern, sentence)
            if match is not None and not codes & facts.modalities:
                named = "/".join(sorted(facts.modalities & KNOWN_MODALITIES))
                return f'says "{" ".join(match.group(0).split())}"; the study\'s Modality is {named}'
    return ""


def _contrast(text: str, facts: StudyFacts) -> str:
    if facts.contrast is not False:
        return ""
    enhancement = bool(facts.modalities & {"CT", "MR"})
    for sentence in _sentences(text):
        if _NO_CONTRAST.search(sentence) or _OTHER_EXAM.search(sentence):
            continue
        match = _CONTRAST.search(sentence) or (_ENHANCING.search(sentence) if enhancement else None)
        if match is not None:
            words = " ".join(match.group(0).lower().split())
            return f"mentions {words}; no contrast agent recorded (Contrast/Bolus Agent, descriptions)"
    return ""


def _images(text: str, raw: Collection[int], seen: frozenset[int]) -> str:
    if not seen:
        return ""
    written = {n for match in _IMAGE_REF.finditer(text) for n in _expand(match.group(1))}
    unknown = sorted(n for n in {*raw, *written} if n not in seen)
    if not unknown:
        return ""
    name = "image" if len(unknown) == 1 else "images"
    return f"cites {name} {_numbers(unknown)}; the model was shown images {_numbers(sorted(seen))}"


def _expand(spec: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|and|&)\s*", spec.strip()):
        bounds = [int(b) for b in re.split(r"\s*(?:-|to)\s*", part) if b.isdigit()]
        if len(bounds) == 2 and bounds[0] <= bounds[1] and bounds[1] - bounds[0] < 100:
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    return numbers


def _numbers(numbers: Sequence[int]) -> str:
    """``1-4, 7`` for sorted image numbers."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


def _sentences(text: str) -> list[str]:
    return [sentence for sentence in _SENTENCE.split(text) if sentence.strip()]


def _line(message: str) -> str:
    limit = CHECK_TEXT_LIMITS["message"]
    return message if len(message) <= limit else message[: limit - 3] + "..."
