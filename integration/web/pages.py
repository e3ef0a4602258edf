"""The review page: server-rendered HTML (worklist, study view with images, draft editor)."""

from __future__ import annotations

from fastapi import APIRouter


def pages_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
