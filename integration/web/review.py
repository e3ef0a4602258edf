"""The review API: a draft's working copy, per-finding changes, sign and reject (JSON, for the page's scripts)."""

from __future__ import annotations

from fastapi import APIRouter


def review_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
