"""A STOW-RS client for the tests: multipart/related bodies of sample files, the POST, the answer's lists."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom

from integration.samples import pydicom_test_file
from tests.web.conftest import ApiProcess

PASSWORD = "correct horse battery staple"
BOUNDARY = "pacsvlm-test-7d1f"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, REFERENCED, REASON, SOP_INSTANCE = "00081198", "00081199", "00081197", "00081155"


def multipart(parts: list[tuple[str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    body = b""
    for content_type, data in parts:
        head = f"--{boundary}\r\n" + (f"Content-Type: {content_type}\r\n" if content_type else "") + "\r\n"
        body += head.encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def dicom(*names: str) -> list[tuple[str | None, bytes]]:
    return [("application/dicom", pydicom_test_file(name).read_bytes()) for name in names]


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stow(
    api: ApiProcess,
    body: bytes | Iterator[bytes],
    *,
    study: str | None = None,
    user: str | None = "up_north",
    password: str = PASSWORD,
    content_type: str = CONTENT_TYPE,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Content-Type": content_type, "Accept": "application/dicom+json", **(headers or {})}
    auth = (user, password) if user else None
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    return httpx.post(api.url + path, content=body, headers=sent, auth=auth, cookies=cookies, timeout=60)


def referenced(answer: dict[str, Any]) -> list[str]:
    return [item[SOP_INSTANCE].get("Value", [None])[0] for item in answer.get(REFERENCED, {}).get("Value", [])]


def failed(answer: dict[str, Any]) -> list[tuple[str | None, int]]:
    return [
        (item[SOP_INSTANCE].get("Value", [None])[0], item[REASON]["Value"][0])
        for item in answer.get(FAILED, {}).get("Value", [])
    ]
