"""STOW-RS on real sockets: ``pacs-vlm api`` on PostgreSQL, bodies sent by httpx (and Orthanc as a STOW-RS client).

Instances are pydicom's bundled test files (read from the wheel's folder, never fetched) and a generated
CT series; users and sites are made with the store functions.
"""

from __future__ import annotations

import base64
import copy
import io
import re
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

from integration.intake.outcome import STOW_AE
from integration.intake.part10 import split_part10
from integration.intake.storage import StorageFull
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.jobs import complete_stable_studies
from integration.store.session import session_scope
from integration.store.tables import UserRole, utcnow
from integration.store.users import create_site, create_user
from integration.web.dicomweb.multipart_related import (
    MalformedMultipart,
    MultipartRelatedParser,
    PartData,
    PartEnd,
    PartSpool,
    PartStart,
    parse_media_type,
)
from integration.web.security.csrf import csrf_token_for_session
from tests.support.orthanc import DICOMWEB_PLUGIN, ORTHANC, OrthancServer
from tests.support.peers import storescu
from tests.support.records import db_rows
from tests.support.stow import (
    BOUNDARY,
    CONTENT_TYPE,
    FAILED,
    PASSWORD,
    REFERENCED,
    dicom,
    encoded,
    failed,
    multipart,
    referenced,
    stow,
)
from tests.web.conftest import ApiProcess

COOKIE = "pacsvlm_session"
CT, MR, RGB = "CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm"


def uid_of(name: str, keyword: str = "SOPInstanceUID") -> str:
    return str(getattr(pydicom.dcmread(pydicom_test_file(name), stop_before_pixels=True), keyword))


def meta_uid(name: str) -> str:
    return str(pydicom.filereader.read_file_meta_info(pydicom_test_file(name)).MediaStorageSOPInstanceUID)


def stored_files(api: ApiProcess) -> list[Path]:
    root = api.data_dir / "instances"
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts) if root.exists() else []


def read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response with a Content-Length body from a raw socket."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < body_length(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def body_length(answer: bytes) -> int:
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer.partition(b"\r\n\r\n")[0])
    return int(found[1]) if found else 0


@pytest.fixture
def users(migrated_postgres_url: str) -> dict[str, int]:
    """Sites NORTH and SOUTH and one user of each kind; returns site ids by code."""
    with session_scope(migrated_postgres_url) as session:
        site_ids = {code: create_site(session, code, code.title()).id for code in ("NORTH", "SOUTH")}
        for name, role, site in (
            ("up_north", UserRole.UPLOADER, "NORTH"),
            ("up_south", UserRole.UPLOADER, "SOUTH"),
            ("rad_north", UserRole.RADIOLOGIST, "NORTH"),
            ("boss", UserRole.ADMIN, None),
        ):
            create_user(session, name, PASSWORD, role, site)
    return site_ids


@pytest.fixture
def api(start_api: Callable[..., ApiProcess], migrated_postgres_url: str, users: dict[str, int]) -> ApiProcess:
    return start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_MAX_INSTANCE_BYTES="100000")


def test_parser_handles_any_chunking_preamble_epilogue_and_refuses_malformed_bodies() -> None:
    body = b"preamble to ignore\r\n" + multipart([("application/dicom", b"A\r\n--pacsvlm-test-7d1X"), (None, b"")])
    body += b"epilogue to ignore"
    for size in (1, 2, 3, 7, 64, len(body)):
        parser = MultipartRelatedParser(BOUNDARY)
        events = [event for start in range(0, len(body), size) for event in parser.feed(body[start : start + size])]
        parser.close()
        parts: list[tuple[dict[str, str], bytes]] = []
        for event in events:
            if isinstance(event, PartStart):
                parts.append((event.headers, b""))
            elif isinstance(event, PartData):
                parts[-1] = (parts[-1][0], parts[-1][1] + event.data)
            else:
                assert isinstance(event, PartEnd)
        assert parts == [({"content-type": "application/dicom"}, b"A\r\n--pacsvlm-test-7d1X"), ({}, b"")], size
    for broken, message in (
        (multipart([(None, b"x")])[:-4], "closing"),
        (b"no boundary anywhere", "no part"),
        (f"--{BOUNDARY}\r\nContent-Type application/dicom\r\n\r\nx".encode(), "header"),
        (f"--{BOUNDARY}junk\r\n".encode(), "line break"),
    ):
        parser = MultipartRelatedParser(BOUNDARY)
        with pytest.raises(MalformedMultipart, match=message):
            parser.feed(broken)
            parser.close()
    with pytest.raises(MalformedMultipart):
        MultipartRelatedParser("bad\nboundary")
    media = parse_media_type('Multipart/Related; TYPE="application/dicom"; boundary="a b"')
    assert media is not None and media.essence == "multipart/related"
    assert media.params == {"type": "application/dicom", "boundary": "a b"}
    assert parse_media_type("nonsense") is None and parse_media_type(None) is None


def test_spool_moves_to_an_unnamed_file_truncates_and_checks_room(tmp_path: Path) -> None:
    asked: list[int] = []
    spool = PartSpool(tmp_path, room=asked.append, memory_limit=10)
    spool.append(b"0123456")
    with spool.view() as whole:
        assert bytes(whole) == b"0123456"
    assert asked == []
    spool.append(b"789abc")  # past the memory limit: into a file, after asking for room
    spool.truncate(9)
    spool.append(b"XY")
    assert asked == [13] and spool.size == 11
    with spool.view() as whole:
        assert bytes(whole) == b"012345678XY"
    assert list(tmp_path.iterdir()) == []  # the file has no name
    spool.close()

    def full(more: int) -> None:
        raise StorageFull("storage headroom exhausted")

    refusing = PartSpool(tmp_path, room=full, memory_limit=4)
    refusing.append(b"1234")
    with pytest.raises(StorageFull):
        refusing.append(b"5")
    refusing.close()


def test_all_stored_durably_with_rows_audit_and_the_study_completing(
    api: ApiProcess, migrated_postgres_url: str, users: dict[str, int]
) -> None:
    url = migrated_postgres_url
    response = stow(api, multipart(dicom(CT, MR, RGB)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert referenced(answer) == [uid_of(CT), uid_of(MR), uid_of(RGB)] and FAILED not in answer
    assert answer[REFERENCED]["Value"][0]["00081150"] == {"vr": "UI", "Value": [uid_of(CT, "SOPClassUID")]}

    files = stored_files(api)
    assert len(files) == 3
    for name in (CT, MR, RGB):
        path = api.data_dir / "instances" / uid_of(name, "StudyInstanceUID") / uid_of(name, "SeriesInstanceUID")
        stored = (path / f"{uid_of(name)}.dcm").read_bytes()
        assert stored.endswith(bytes(split_part10(pydicom_test_file(name).read_bytes()).dataset))
        assert pydicom.dcmread(io.BytesIO(stored)).file_meta.SourceApplicationEntityTitle == STOW_AE
    rows = db_rows(url, "SELECT source, site_id, calling_ae, state FROM studies ORDER BY id")
    assert rows == [("stow", users["NORTH"], STOW_AE, "receiving")] * 3
    assert db_rows(url, "SELECT count(*) FROM instances") == [(3,)]
    audit = db_rows(url, "SELECT actor, object_type, object_id, detail FROM audit_events WHERE action = 'upload.stow'")
    assert {row[2] for row in audit} == {uid_of(name, "StudyInstanceUID") for name in (CT, MR, RGB)}
    assert all(row[:2] == ("up_north", "study") for row in audit)
    assert all(row[3] == {"stored": 1, "duplicates": 0, "failed": 0, "auth": "basic"} for row in audit)

    with session_scope(url) as session:
        assert len(complete_stable_studies(session, utcnow() + timedelta(seconds=31), "analysis")) == 3
    assert db_rows(url, "SELECT DISTINCT state, site_id FROM studies") == [("stable", users["NORTH"])]

    log = api.log_path.read_text(errors="replace")
    ds = pydicom.dcmread(pydicom_test_file(CT))
    assert str(ds.PatientName) not in log and PASSWORD not in log


def test_a_mix_gets_202_with_a_failure_reason_per_part_and_only_good_instances_stored(
    api: ApiProcess, migrated_postgres_url: str
) -> None:
    ct_study = uid_of(CT, "StudyInstanceUID")
    parts = [
        *dicom(CT, "badVR.dcm", MR, "examples_rgb_color.dcm"),  # MR: another study; the last above the size limit
        ("text/plain", b"this is not DICOM"),
        ("application/dicom", b"\0" * 128 + b"DICM garbage"),
    ]
    response = stow(api, multipart(parts), study=ct_study)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert referenced(answer) == [uid_of(CT)]
    assert failed(answer) == [
        (meta_uid("badVR.dcm"), 0xC000),  # cannot understand; its UIDs from the file meta
        (uid_of(MR), 0xA900),  # not of the study in the path
        (uid_of("examples_rgb_color.dcm"), 0xA700),  # above PACSVLM_MAX_INSTANCE_BYTES: out of resources
        (None, 0xC000),  # not application/dicom
        (None, 0xC000),  # not a Part 10 file
    ]
    assert len(stored_files(api)) == 1
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(1,)]
    detail = db_rows(
        migrated_postgres_url,
        "SELECT detail FROM audit_events WHERE action = 'upload.stow' AND object_id = :s",
        s=ct_study,
    )
    assert detail == [({"stored": 1, "duplicates": 0, "failed": 4, "auth": "basic"},)]

    none = stow(api, multipart(dicom("MR_truncated.dcm")))
    assert none.status_code == 409 and failed(none.json()) == [(uid_of("MR_truncated.dcm"), 0xC000)]
    assert REFERENCED not in none.json()


def test_duplicates_succeed_and_keep_one_copy(api: ApiProcess, migrated_postgres_url: str) -> None:
    first = stow(api, multipart(dicom(CT)))
    copy = stow(api, multipart(dicom(CT, CT)))
    assert first.status_code == copy.status_code == 200
    assert referenced(copy.json()) == [uid_of(CT), uid_of(CT)]
    assert len(stored_files(api)) == 1
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(1,)]
    details = db_rows(migrated_postgres_url, "SELECT detail FROM audit_events WHERE action = 'upload.stow' ORDER BY id")
    assert details[-1] == ({"stored": 0, "duplicates": 2, "failed": 0, "auth": "basic"},)


def test_path_traversal_uids_are_refused_and_nothing_lands_outside_the_store(
    api: ApiProcess, migrated_postgres_url: str, tmp_path: Path
) -> None:
    source = pydicom.dcmread(pydicom_test_file(CT))
    target = tmp_path / "escaped"
    parts: list[tuple[str | None, bytes]] = []
    with pydicom_config.disable_value_validation():
        for attribute, value in (
            ("StudyInstanceUID", f"../../../../../../..{target}"),
            ("SeriesInstanceUID", "1.2.3/../../x"),
            ("SOPInstanceUID", "../../../../../../../tmp/pacsvlm-escaped"),
        ):
            ds = source.copy()
            setattr(ds, attribute, value)
            parts.append(("application/dicom", encoded(ds)))
    response = stow(api, multipart(parts))
    assert response.status_code == 409
    assert [reason for _, reason in failed(response.json())] == [0xC000] * 3
    assert "../" not in response.text  # invalid UIDs are not echoed
    for bad in ("1.2.840..5", "1.2.3x", "1." + "2" * 70):
        assert stow(api, multipart(dicom(CT)), study=bad).status_code == 400
    assert stow(api, multipart(dicom(CT)), study="..%2F..%2Ftmp").status_code in (400, 404)
    assert not target.exists() and not Path("/tmp/pacsvlm-escaped.dcm").exists()
    assert stored_files(api) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(0,)]


def test_bad_requests_get_http_errors_and_store_nothing(api: ApiProcess, migrated_postgres_url: str) -> None:
    body = multipart(dicom(CT))
    cases = [
        (stow(api, body, content_type="application/dicom"), 415),
        (stow(api, body, content_type='multipart/related; type="application/dicom+json"; boundary=x'), 415),
        (stow(api, body, content_type='multipart/related; type="application/dicom"'), 400),
        (stow(api, body[:-10]), 400),  # no closing delimiter
        (stow(api, b""), 400),
        (stow(api, f"--{BOUNDARY}--\r\n".encode()), 400),  # no part
        (stow(api, body, headers={"Accept": "application/dicom+xml"}), 406),
    ]
    for response, expected in cases:
        assert response.status_code == expected, response.text
        assert response.json()["detail"]
    assert stored_files(api) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(0,)]


def test_a_body_above_the_limit_gets_413_before_it_is_read(api: ApiProcess, migrated_postgres_url: str) -> None:
    credentials = base64.b64encode(f"up_north:{PASSWORD}".encode()).decode()
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {credentials}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        "Content-Length: 1000000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head.encode() + multipart(dicom(CT))[:1000])
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"exceeds" in answer, answer[:300]
    assert stored_files(api) == []


def test_a_chunked_body_streams_and_a_large_study_passes_through_the_file_spool(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, users: dict[str, int], tmp_path: Path
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url)
    series = write_ct_series(tmp_path / "ct", 40, rows=512, columns=512)  # ~21 MB: beyond the memory spool
    body = multipart([("application/dicom", path.read_bytes()) for path in series])
    assert len(body) > 16 * 1024**2

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100_003):
            yield body[start : start + 100_003]

    response = stow(api, chunks())
    assert response.status_code == 200, response.text
    assert len(referenced(response.json())) == 40
    for path in series:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = api.data_dir / "instances" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert stored.read_bytes().endswith(bytes(split_part10(path.read_bytes()).dataset))
    assert db_rows(migrated_postgres_url, "SELECT count(*), sum(size_bytes) > 20000000 FROM instances") == [(40, True)]
    incoming = list((api.data_dir / "instances" / ".incoming").iterdir())  # only the store's empty spares
    assert all(path.suffix == ".part" and path.stat().st_size == 0 for path in incoming)


def test_a_chunked_body_above_the_request_limit_gets_413_and_stores_nothing(
    start_api: Callable[..., ApiProcess], migrated_postgres_url: str, users: dict[str, int]
) -> None:
    api = start_api(PACSVLM_DATABASE_URL=migrated_postgres_url, PACSVLM_MAX_UPLOAD_BYTES="60000")
    body = multipart([*dicom(CT), ("application/dicom", b"x" * 30000)])  # the first part would fit
    assert 60000 < len(body) < 80000
    response = stow(api, iter([body[i : i + 8192] for i in range(0, len(body), 8192)]))
    assert response.status_code == 413
    assert stored_files(api) == []
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(0,)]


def test_authentication_roles_sites_and_csrf(api: ApiProcess, migrated_postgres_url: str) -> None:
    body = multipart(dicom(CT))
    anonymous = stow(api, body, user=None)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic ")
    wrong = stow(api, body, password="not the password")
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic ")
    assert stow(api, body, user=None, headers={"Authorization": "Basic !!!"}).status_code == 401
    assert stow(api, body, user=None, headers={"Authorization": "Bearer abc"}).status_code == 401
    assert stow(api, body, user="rad_north").status_code == 403
    assert stored_files(api) == []
    failures = db_rows(
        migrated_postgres_url, "SELECT actor, detail FROM audit_events WHERE action = 'auth.login_failed'"
    )
    assert failures == [("up_north", {"via": "basic"})]

    login = httpx.post(api.url + "/api/login", json={"username": "up_north", "password": PASSWORD}, timeout=10)
    cookie = {COOKIE: login.cookies[COOKIE]}
    assert stow(api, body, user=None, cookies=cookie).status_code == 403  # no CSRF token
    token = {"X-CSRF-Token": csrf_token_for_session(cookie[COOKIE])}
    with_token = stow(api, body, user=None, cookies=cookie, headers=token)
    assert with_token.status_code == 200, with_token.text
    radiologist = httpx.post(api.url + "/api/login", json={"username": "rad_north", "password": PASSWORD}, timeout=10)
    rad_cookie = {COOKIE: radiologist.cookies[COOKIE]}
    rad_token = {"X-CSRF-Token": csrf_token_for_session(rad_cookie[COOKIE])}
    assert stow(api, body, user=None, cookies=rad_cookie, headers=rad_token).status_code == 403

    other = pydicom.dcmread(pydicom_test_file(CT))
    other.SOPInstanceUID = "1.2.3.4.5.6.7.8.9.1"
    from_south = stow(api, multipart([("application/dicom", encoded(other))]), user="up_south")
    assert from_south.status_code == 409 and failed(from_south.json()) == [("1.2.3.4.5.6.7.8.9.1", 0x0124)]
    by_admin = stow(api, multipart([("application/dicom", encoded(other))]), user="boss")
    assert by_admin.status_code == 200
    assert len(stored_files(api)) == 2
    auth_kinds = db_rows(migrated_postgres_url, "SELECT detail->>'auth' FROM audit_events WHERE action = 'upload.stow'")
    assert sorted(kind for (kind,) in auth_kinds) == ["basic", "basic", "session"]


@pytest.mark.skipif(not (Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()), reason="Orthanc not installed")
def test_orthanc_pushes_a_study_with_its_stow_rs_client(api: ApiProcess, migrated_postgres_url: str) -> None:
    server = {"Url": f"{api.url}/dicomweb/", "Username": "up_north", "Password": PASSWORD}
    dicomweb = {"Enable": True, "Root": "/dicom-web/", "Servers": {"pacsvlm": server}}
    with OrthancServer(plugins=[DICOMWEB_PLUGIN], extra_config={"DicomWeb": dicomweb}) as orthanc:
        study = orthanc.upload(pydicom_test_file(CT))["ParentStudy"]
        orthanc.post_json("/dicom-web/servers/pacsvlm/stow", {"Resources": [study], "Synchronous": True})
    assert db_rows(migrated_postgres_url, "SELECT sop_instance_uid FROM instances") == [(uid_of(CT),)]
    assert db_rows(migrated_postgres_url, "SELECT source FROM studies") == [("stow",)]


def test_an_instance_reusing_another_studys_series_or_sop_instance_uid_is_refused(
    api: ApiProcess, migrated_postgres_url: str
) -> None:
    # A NORTH study arrives; a SOUTH uploader then names a study of its own but reuses the NORTH series
    # (or the NORTH instance): neither may join, or open, any study.
    north = pydicom.dcmread(pydicom_test_file(CT))
    assert stow(api, multipart([("application/dicom", encoded(north))])).status_code == 200
    north_study = str(north.StudyInstanceUID)

    same_series = copy.deepcopy(north)
    same_series.StudyInstanceUID, same_series.SOPInstanceUID = generate_uid(), generate_uid()
    same_instance = copy.deepcopy(north)
    same_instance.StudyInstanceUID, same_instance.SeriesInstanceUID = generate_uid(), generate_uid()
    same_instance.file_meta.MediaStorageSOPInstanceUID = north.SOPInstanceUID
    same_series.file_meta.MediaStorageSOPInstanceUID = same_series.SOPInstanceUID
    body = multipart([("application/dicom", encoded(same_series)), ("application/dicom", encoded(same_instance))])

    answer = stow(api, body, user="up_south")

    assert answer.status_code == 409, answer.text
    assert failed(answer.json()) == [(str(same_series.SOPInstanceUID), 0xA900), (str(north.SOPInstanceUID), 0xA900)]
    assert db_rows(migrated_postgres_url, "SELECT study_uid FROM studies") == [(north_study,)]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(1,)]
    assert len(stored_files(api)) == 1
    events = db_rows(
        migrated_postgres_url,
        "SELECT object_id, detail->>'conflict' FROM audit_events WHERE action = 'instance.refused' ORDER BY id",
    )
    assert events == [(north_study, "series"), (north_study, "instance")]


def test_another_sites_uploader_cannot_join_or_move_a_modalitys_study(
    api: ApiProcess,
    users: dict[str, int],
    listener_factory: Callable[..., Any],
    migrated_postgres_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # A NORTH modality's study is still receiving (inside the stable window) when a SOUTH uploader STOWs an
    # instance with its Study UID: refused, audited, and the study stays NORTH's.
    listener = listener_factory(
        migrated_postgres_url, redis_url, calling_aes={"CT_NORTH": {"site": "NORTH"}}, stable_seconds=30.0
    )
    series = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    assert storescu(listener.port, series[:1], calling_ae="CT_NORTH").returncode == 0
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)

    answer = stow(api, multipart([("application/dicom", series[1].read_bytes())]), user="up_south")

    assert answer.status_code == 409, answer.text
    sop = str(pydicom.dcmread(series[1], stop_before_pixels=True).SOPInstanceUID)
    assert failed(answer.json()) == [(sop, 0x0124)]
    assert db_rows(migrated_postgres_url, "SELECT site_id, state FROM studies") == [(users["NORTH"], "receiving")]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(1,)]
    events = db_rows(
        migrated_postgres_url,
        "SELECT object_id, detail->>'conflict' FROM audit_events WHERE action = 'instance.refused' ORDER BY id",
    )
    assert events == [(study, "site")]
    # The NORTH uploader may add to it.
    assert stow(api, multipart([("application/dicom", series[1].read_bytes())])).status_code == 200
