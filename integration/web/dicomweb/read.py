"""DICOMweb reads under ``/dicomweb``: query (QIDO-RS), retrieve (WADO-RS) and rendered images.

Everything a site holds, as a viewer (OHIF, Orthanc's DICOMweb client, dicomweb-client) reads it: the
instances received and our own SR, TID 1500 and KOS objects (:mod:`integration.store.catalog`), for
radiologists and administrators (:func:`~integration.web.security.dicomweb_auth.dicomweb_reader`), each
seeing only their site's studies (another site's study answers 404, as one that does not exist).
"""

from __future__ import annotations

from fastapi import APIRouter

from integration.web.dicomweb.qido import qido_router
from integration.web.dicomweb.rendered import rendered_router
from integration.web.dicomweb.wado import wado_router


def dicomweb_read_router() -> APIRouter:
    """Build the read router: QIDO-RS, WADO-RS and rendered routes under ``/dicomweb``."""
    router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
    router.include_router(qido_router())
    router.include_router(wado_router())
    router.include_router(rendered_router())
    return router
