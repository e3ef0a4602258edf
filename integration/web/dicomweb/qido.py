"""DICOMweb qido routes (issue 18, being built: see docs/issue18-design.md)."""

from __future__ import annotations

from fastapi import APIRouter


def qido_router() -> APIRouter:
    """Build the qido router (mounted under ``/dicomweb`` by :mod:`integration.web.dicomweb.read`)."""
    return APIRouter()
