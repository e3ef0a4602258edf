"""DICOMweb STOW-RS intake: ``POST /dicomweb/studies`` into the durable instance store."""

from __future__ import annotations

from fastapi import APIRouter


def stow_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
