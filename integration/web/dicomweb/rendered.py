"""DICOMweb rendered routes (issue 18, being built: see docs/issue18-design.md)."""

from __future__ import annotations

from fastapi import APIRouter


def rendered_router() -> APIRouter:
    """Build the rendered router (mounted under ``/dicomweb`` by :mod:`integration.web.dicomweb.read`)."""
    return APIRouter()
