"""Whether a working copy may be signed: signing is the safety boundary between AI text and a report.

A signature makes the model's text a radiologist's report, so it must not happen by two clicks on text
nobody read.  Every finding is accepted, edited or rejected first, or the radiologist attests, in one
explicit confirmation that names how many, that the unreviewed findings are signed as written.  A draft whose
model output could not be parsed ("model output not structured") holds whatever the model wrote in one
piece: it is signed only after the radiologist has written something of their own (an edit, an added
finding, an impression, limitations or a comparison).  A draft's consistency checks (contradictions between
its text and the study's header) are each dismissed or fixed first (:attr:`WorkingCopy.open_checks`); drafts
recorded before checks existed have none.  The rules are checked by the server (:func:`signing_refusal`
is called by :func:`integration.reports.review.sign_reviewed`), whatever page or script asks.
"""

from __future__ import annotations

from integration.store.reviews import ReviewError, WorkingCopy

#: How a check's kind is named in a refusal (the kinds of ``integration.draft_checks.CHECK_KINDS``).
CHECK_KIND_NAMES = {
    "laterality": "laterality",
    "sex": "sex-specific anatomy",
    "region": "body region",
    "modality": "modality",
    "contrast": "contrast",
    "image": "cited image",
    "identifier": "identifier",
}


class ReviewIncomplete(ReviewError):
    """The working copy may not be signed yet; the message says what is missing."""


def unreviewed_count(copy: WorkingCopy) -> int:
    """Return how many of the model's findings nobody accepted, edited or rejected.

    Parameters
    ----------
    copy : WorkingCopy
        The working copy.

    Returns
    -------
    int
        Findings still ``pending``.
    """
    return sum(1 for finding in copy.findings if finding.decision == "pending")


def written_by_reader(copy: WorkingCopy) -> bool:
    """Say whether the radiologist wrote anything of their own into the working copy.

    Parameters
    ----------
    copy : WorkingCopy
        The working copy.

    Returns
    -------
    bool
        True when a finding was edited or added, or the impression, limitations or comparison differ from the
        model's.
    """
    return (
        any(finding.decision in ("edited", "added") for finding in copy.findings)
        or copy.impression != copy.draft_impression
        or copy.limitations != copy.draft_limitations
        or copy.comparison != copy.draft_comparison
    )


def open_checks_refusal(copy: WorkingCopy) -> str | None:
    """Say how many consistency checks are neither dismissed nor fixed, and of which kinds (None when none).

    Parameters
    ----------
    copy : WorkingCopy
        The working copy.

    Returns
    -------
    str or None
        ``"2 consistency checks are open (laterality, contrast): dismiss each or fix its finding (edit or
        reject it) before signing"``.
    """
    checks = copy.open_checks
    if not checks:
        return None
    kinds = ", ".join(dict.fromkeys(CHECK_KIND_NAMES.get(check.kind, check.kind) for check in checks))
    noun = "consistency check is" if len(checks) == 1 else "consistency checks are"
    return f"{len(checks)} {noun} open ({kinds}): dismiss each or fix its finding (edit or reject it) before signing"


def signing_refusal(copy: WorkingCopy, *, structured: bool, confirm_unreviewed: int | None) -> str | None:
    """Say why a working copy may not be signed now, or None when it may.

    Parameters
    ----------
    copy : WorkingCopy
        The working copy to sign.
    structured : bool
        Whether the model's output was parsed into findings (``Report.structured``).
    confirm_unreviewed : int or None
        How many unreviewed findings the radiologist confirmed signing as written; it must equal the
        number still unreviewed (a confirmation given for another count, on a stale page, is not one).

    Returns
    -------
    str or None
        A sentence for the radiologist (open consistency checks first, see :func:`open_checks_refusal`).
    """
    reasons = [checks] if (checks := open_checks_refusal(copy)) else []
    if not structured and not written_by_reader(copy):
        reasons.append(
            "the model's output could not be parsed (model output not structured): edit a finding, add one or "
            "write the impression before signing"
        )
    elif (pending := unreviewed_count(copy)) and confirm_unreviewed != pending:
        noun = "finding was" if pending == 1 else "findings were"
        reasons.append(
            f"{pending} {noun} not reviewed: accept, edit or reject each finding, or confirm that you sign "
            f"the {pending} unreviewed {'finding' if pending == 1 else 'findings'} as written"
        )
    return "; ".join(reasons) or None


def check_ready(copy: WorkingCopy, *, structured: bool, confirm_unreviewed: int | None) -> None:
    """Refuse a working copy that may not be signed now.

    Parameters
    ----------
    copy : WorkingCopy
        The working copy.
    structured : bool
        Whether the model's output was parsed.
    confirm_unreviewed : int or None
        The radiologist's confirmation (see :func:`signing_refusal`).

    Raises
    ------
    ReviewIncomplete
        With the reason of :func:`signing_refusal`.
    """
    if (reason := signing_refusal(copy, structured=structured, confirm_unreviewed=confirm_unreviewed)) is not None:
        raise ReviewIncomplete(reason)
