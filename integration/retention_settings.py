"""How long the store keeps what it received and wrote: the retention policies, validated by pydantic only.

``PACSVLM_RETENTION`` lists policies; with none (the default) everything is kept forever, as before::

    [{"site": "*", "source": "*", "instance_days": 30, "report_days": 3650},
     {"site": "TELE", "source": "upload", "instance_days": 7}]

A study's reading ends when its report of record is signed or its draft rejected; ``instance_days`` later its
instances (and its priors' instances, which go with it) may be purged, ``report_days`` later (None: never)
its report rows, SR, TID 1500 and KOS files and the study row itself.  The most specific policy wins: site
and source named, then site, then source, then ``*``/``*``.  Like the other allowlists it lives beside the
settings so the settings need no store code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: ``studies.source`` of each source a policy may name (``dicomweb`` is STOW-RS, stored as ``stow``).
STORED_SOURCES = {"dicom": "dicom", "dicomweb": "stow", "stow": "stow", "upload": "upload"}
#: A century: longer is a typo.
MAX_DAYS = 36_500


class RetentionPolicy(BaseModel):
    """How long one site's studies of one source are kept.

    Attributes
    ----------
    site : str
        A site's code, or ``*`` for every site (studies without a site match only ``*``).
    source : {"dicom", "dicomweb", "stow", "upload", "*"}
        How the studies arrived: C-STORE, STOW-RS (``dicomweb`` or ``stow``), photo upload, or any.
    instance_days : int
        Days after the end of the study's reading until its instances (and its priors') may be purged.
    report_days : int, optional
        Days after the end of the reading until its report rows, SR/KOS files and the study row go; at least
        ``instance_days``.  None: reports are kept forever.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: Annotated[str, Field(min_length=1, max_length=16)] = "*"
    source: Literal["dicom", "dicomweb", "stow", "upload", "*"] = "*"
    instance_days: Annotated[int, Field(ge=0, le=MAX_DAYS)]
    report_days: Annotated[int, Field(ge=0, le=MAX_DAYS)] | None = None

    @model_validator(mode="after")
    def _reports_outlive_instances(self) -> RetentionPolicy:
        if self.report_days is not None and self.report_days < self.instance_days:
            raise ValueError("report_days must be at least instance_days (a report outlives its images)")
        return self

    @property
    def stored_source(self) -> str:
        """The ``studies.source`` value this policy names, or ``*``."""
        return STORED_SOURCES.get(self.source, "*")

    def specificity(self, site_code: str | None, source: str) -> int | None:
        """Return how specifically this policy matches a study (higher wins), or None when it does not."""
        site_match = self.site == "*" or (site_code is not None and self.site == site_code)
        source_match = self.stored_source in ("*", source)
        if not (site_match and source_match):
            return None
        return (2 if self.site != "*" else 0) + (1 if self.stored_source != "*" else 0)


def policy_for(policies: Sequence[RetentionPolicy], site_code: str | None, source: str) -> RetentionPolicy | None:
    """Return the most specific policy for a study of ``site_code`` that arrived by ``source``.

    Parameters
    ----------
    policies : sequence of RetentionPolicy
        The configured policies.
    site_code : str or None
        The study's site.
    source : str
        ``studies.source`` (``dicom``, ``stow``, ``upload``).

    Returns
    -------
    RetentionPolicy or None
        None: no policy covers the study; it is kept forever.
    """
    best: tuple[int, RetentionPolicy] | None = None
    for policy in policies:
        rank = policy.specificity(site_code, source)
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, policy)
    return best[1] if best else None


def unique_policies(policies: list[RetentionPolicy]) -> list[RetentionPolicy]:
    """Return ``policies`` unchanged when no two name the same site and source.

    Raises
    ------
    ValueError
        Two policies name the same site and source (which would win would be arbitrary).
    """
    seen: set[tuple[str, str]] = set()
    for policy in policies:
        key = (policy.site, policy.stored_source)
        if key in seen:
            raise ValueError(f"two retention policies for site {policy.site!r} and source {policy.source!r}")
        seen.add(key)
    return policies
