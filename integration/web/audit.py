"""The audit log for administrators: ``GET /api/audit``."""

from __future__ import annotations

from fastapi import APIRouter


def audit_router() -> APIRouter:
    """Build the router (filled in by its issue-5 part).

    Returns
    -------
    fastapi.APIRouter
        The routes.
    """
    return APIRouter()
