"""The absolute ``/dicomweb`` URL that RetrieveURLs and BulkDataURIs start with (one rule for every route).

``PACSVLM_PUBLIC_URL`` when configured (behind a reverse proxy, or for clients that send ``Host`` without the
port, as dicomweb-client does), otherwise the request's own base URL.
"""

from __future__ import annotations

from fastapi import Request

from integration.config import Settings


def dicomweb_base(request: Request, settings: Settings) -> str:
    """The absolute ``/dicomweb`` URL: from ``public_url`` when configured, else from the request's Host."""
    root = settings.public_url or str(request.base_url)
    return root.rstrip("/") + "/dicomweb"
