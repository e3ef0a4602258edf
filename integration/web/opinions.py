"""Second opinions: re-analysis with another model or prompt, optionally at stat priority."""

from __future__ import annotations

from fastapi import APIRouter


def opinions_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
