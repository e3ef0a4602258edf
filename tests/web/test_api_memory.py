"""Issue 13 item 5: what a hostile client can make the real ``pacs-vlm api`` process hold, with its RSS measured.

Two 400 MB JSON bodies to ``/api/login`` took 2.1 GiB; a 12 MB STOW-RS body of a million tiny parts took
1.35 GiB, 20 s of CPU on the event loop (``/health`` answered after 21.8 s) and an 87 MB answer; a 160 kB
PNG became a 147 MB DICOM file and cost 1.1 GiB.  Each bound below is stated next to its measurement.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.stow import PASSWORD, stow
from tests.web.conftest import ApiProcess
from tests.web.test_photo_upload import FORM, read_response, sign_in, upload
from tests.web.test_stow import users  # noqa: F401 (the fixture)

MIB = 1024**2


def rss(api: ApiProcess, reset_peak: bool = False) -> tuple[int, int]:
    """The process's resident set and its peak so far, in bytes (/proc/<pid>/status); optionally reset the peak."""
    assert api.process is not None
    if reset_peak:
        Path(f"/proc/{api.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{api.process.pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def raw_request(api: ApiProcess, head: str, body_chunks: int = 0, chunk: bytes = b"", chunked: bool = False) -> bytes:
    """Send a request head and up to ``body_chunks`` pieces of body on a raw socket; return the answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(body_chunks):
                piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is waiting
        return read_response(sock)


@pytest.fixture
def api(start_api: Callable[..., ApiProcess], migrated_postgres_url: str, users: dict[str, int]) -> ApiProcess:  # noqa: F811
    return start_api(PACSVLM_DATABASE_URL=migrated_postgres_url)


def test_json_bodies_are_refused_before_they_are_read(api: ApiProcess) -> None:
    httpx.get(api.url + "/health", timeout=10)
    before, _ = rss(api, reset_peak=True)
    started = time.monotonic()
    for _ in range(2):  # a 400 MB body announced: refused from its Content-Length, before a byte of it is read
        head = (
            "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400000000\r\n\r\n"
        )
        answer = raw_request(api, head)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"the request body exceeds 1048576 bytes" in answer
    assert time.monotonic() - started < 5  # it waited for none of the 800 MB
    # 64 MiB streamed without a Content-Length: cut off at the limit
    head = "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_request(api, head, body_chunks=256, chunk=b" " * (256 * 1024), chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    after, peak = rss(api)
    print(f"\nhostile JSON bodies: rss {before / MIB:.0f} -> {after / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB")
    assert peak - before < 32 * MIB  # was 2.1 GiB for the two 400 MB bodies
    assert httpx.post(api.url + "/api/login", json={"username": "up_north", "password": PASSWORD}).status_code == 200


def test_a_stow_body_of_a_million_tiny_parts_is_refused_at_the_part_limit_without_stalling(api: ApiProcess) -> None:
    parts = 1_000_000
    body = b"--b\r\n\r\nx\r\n" * parts + b"--b--\r\n"  # 10 MB; each part would be an instance
    httpx.get(api.url + "/health", timeout=10)
    before, _ = rss(api, reset_peak=True)
    health: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            started = time.monotonic()
            httpx.get(api.url + "/health", timeout=60)
            health.append(time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    started = time.monotonic()
    try:
        answer = stow(api, body, content_type='multipart/related; type="application/dicom"; boundary=b')
    finally:
        elapsed = time.monotonic() - started
        done.set()
        poller.join()
    after, peak = rss(api)
    print(
        f"\nhostile STOW of {parts} parts: {answer.status_code} in {elapsed:.1f} s, "
        f"answer {len(answer.content)} bytes, "
        f"rss {before / MIB:.0f} -> {after / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, "
        f"slowest /health {max(health):.2f} s of {len(health)}"
    )
    assert answer.status_code == 413, answer.text[:300]
    assert "at most 10000 instances" in answer.json()["detail"]
    assert len(answer.content) < 1024  # was an 87 MB answer
    assert peak - before < 96 * MIB  # was +1.35 GiB; argon2id checking the Basic credentials alone takes 64 MiB
    assert max(health) < 3.0  # was 21.8 s: the parts are parsed off the event loop


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 180, 160)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def test_a_photo_with_more_pixels_than_the_bound_is_refused_unread_and_uploads_are_admitted_per_user(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_MAX_UPLOADS_PER_MINUTE="3")
    cookies, headers = sign_in(api, "up_north")
    flat = png(7000, 7000)  # 49 megapixels: a 147 MB DICOM file from a small PNG
    assert len(flat) < 1 * MIB
    before, _ = rss(api, reset_peak=True)
    refused = upload(api, cookies, headers, flat)
    _, peak = rss(api)
    print(
        f"\nhostile photo 7000x7000 ({len(flat)} bytes): {refused.status_code}, peak +{(peak - before) / MIB:.0f} MiB"
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [
        {"loc": ["body", "file"], "msg": "has 7000x7000 pixels; at most 24000000 are accepted"}
    ]
    assert peak - before < 32 * MIB  # was +1.1 GiB converting it

    before, _ = rss(api, reset_peak=True)
    stored = upload(api, cookies, headers, png(4000, 3000))  # a 12-megapixel phone photo is stored
    _, peak = rss(api)
    print(f"12-megapixel photo: {stored.status_code}, peak +{(peak - before) / MIB:.0f} MiB")
    assert stored.status_code == 201, stored.text
    assert peak - before < 320 * MIB  # about 17 bytes a pixel while converting

    # the per-user admission: 3 uploads a minute here (two used above), then 429 for this user only
    small = png(64, 64)
    assert upload(api, cookies, headers, small).status_code == 201
    limited = upload(api, cookies, headers, small)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert "uploads per minute" in limited.json()["detail"]
    south = sign_in(api, "up_south")
    assert upload(api, *south, small, form=FORM).status_code == 201


def test_an_uploader_has_a_bounded_number_of_uploads_in_progress(
    start_api: Callable[..., ApiProcess],
    migrated_postgres_url: str,
    users: dict[str, int],  # noqa: F811
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_MAX_UPLOADS_IN_PROGRESS="1")
    credentials = base64.b64encode(f"up_north:{PASSWORD}".encode()).decode()
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + credentials + "\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\nContent-Length: 1000000\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as slow:
        slow.sendall(head.encode() + b"--b\r\n\r\n")  # an upload in progress, its body still coming
        time.sleep(1.0)
        second = stow(
            api, b"--b\r\n\r\nx\r\n--b--\r\n", content_type='multipart/related; type="application/dicom"; boundary=b'
        )
        assert second.status_code == 429, second.text
        assert "uploads in progress" in second.json()["detail"]
        other = stow(
            api,
            b"--b\r\n\r\nx\r\n--b--\r\n",
            user="up_south",
            content_type='multipart/related; type="application/dicom"; boundary=b',
        )
        assert other.status_code == 409  # another uploader is admitted (its part is no DICOM: refused on its own)
