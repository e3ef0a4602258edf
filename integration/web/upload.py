"""Photo upload: a JPEG/PNG and a small form, wrapped into DICOM for the same pipeline."""

from __future__ import annotations

from fastapi import APIRouter


def upload_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
