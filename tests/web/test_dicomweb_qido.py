"""QIDO-RS, viewer tokens and CORS on a real ``pacs-vlm api`` process, searched with dicomweb-client.

One api process and one data set for the module: site NORTH holds a CT study (with a draft, so our SR is
one of its series) and a three-slice generated CT study; site SOUTH holds one CT study.  dicomweb-client
(an independent implementation) searches with a viewer token, HTTP Basic or the sign-in cookie; the
south radiologist must see nothing of the north's studies by any of them.  CORS is on for one origin in
this process; a process built with the default settings (in-process) shows none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.reports.drafts import ensure_draft_sr
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.catalog import StoredObject, objects_of
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Study, utcnow
from integration.web.app import create_app
from integration.web.security.csrf import csrf_token_for_session
from tests.conftest import TEST_REDIS_DB
from tests.support.instances import ingest
from tests.support.review_app import copy_with_new_uids, draft, evidence_of, ingest_settings, sign_in, sites_and_users
from tests.support.services import Postgres, RedisServer
from tests.support.stow import dicom, multipart, stow
from tests.web.conftest import ApiProcess
from tests.web.test_auth import COOKIE, PASSWORD, add_user

VIEWER = "https://viewer.example"
STUDY_UID, SERIES_UID, SOP_UID, MODALITY, RETRIEVE_URL = "0020000D", "0020000E", "00080018", "00080060", "00081190"


@dataclass
class World:
    settings: Settings
    api: ApiProcess
    chest: pydicom.Dataset  # NORTH, Doe^Jane, 20260315, with a draft SR
    series: list[pydicom.Dataset]  # NORTH, three slices, Synthetic^Chest, 20261123
    south: pydicom.Dataset  # SOUTH, Doe^John, 20260315
    sr_series: str
    ours: list[StoredObject]  # our objects of the chest study (the draft SR, and its TID 1500 and KOS when written)

    @property
    def base(self) -> str:
        return self.api.url + "/dicomweb"


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = postgres.create_database()
    upgrade(url)
    tmp = tmp_path_factory.mktemp("qido")
    settings = ingest_settings(url, redis_server.url(TEST_REDIS_DB), tmp)
    sites_and_users(url)
    add_user(url, "south_rad", "radiologist", "SOUTH")
    earlier = utcnow() - timedelta(seconds=120)
    chest_file = copy_with_new_uids(
        pydicom_test_file("CT_small.dcm"),
        tmp / "files" / "chest.dcm",
        PatientName="Doe^Jane",
        PatientID="PID-N1",
        AccessionNumber="ACC100",
        StudyDate="20260315",
        StudyDescription="CT Chest",
        ReferringPhysicianName="Who^Sent",
    )
    chest = ingest(settings, chest_file, earlier, "CT1")
    series = [
        ingest(settings, path, earlier, "CT1") for path in write_ct_series(tmp / "series", 3, rows=16, columns=16)
    ]
    south_file = copy_with_new_uids(
        pydicom_test_file("CT_small.dcm"), tmp / "files" / "south.dcm", PatientName="Doe^John", StudyDate="20260315"
    )
    south = ingest(settings, south_file, earlier, "SOUTH1")
    assert StudyAssembler(settings).run_once().jobs_created == 3
    report = draft(settings, str(chest.StudyInstanceUID), [{"text": "Nodule.", "images": [1]}], [evidence_of(chest, 1)])
    sr = pydicom.dcmread(ensure_draft_sr(settings, report), stop_before_pixels=True)
    with session_scope(url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == str(chest.StudyInstanceUID))).one()
        ours = [item for item in objects_of(session, study) if item.ours]
    assert ours[0].series_uid == str(sr.SeriesInstanceUID)
    api = ApiProcess(
        tmp / "api",
        {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": url,
            "PACSVLM_BROKER_URL": settings.broker_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
            "PACSVLM_DICOMWEB_CORS_ORIGINS": json.dumps([VIEWER]),
        },
    ).start()
    yield World(settings, api, chest, series, south, str(sr.SeriesInstanceUID), ours)
    api.stop()


def viewer_token(world: World, username: str) -> str:
    client = sign_in(world.api, username)
    answer = client.post("/api/viewer-token", headers={"X-CSRF-Token": csrf_token_for_session(client.cookies[COOKIE])})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=7.9) < expires - utcnow() <= timedelta(hours=8)
    return str(body["token"])


def bearer_client(world: World, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=world.base, headers={"Authorization": f"Bearer {token}"})


def basic_client(world: World, username: str) -> DICOMwebClient:
    session = requests.Session()
    session.auth = (username, PASSWORD)
    return DICOMwebClient(url=world.base, session=session)


def first(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


def uids(results: list[dict[str, Any]], tag: str = STUDY_UID) -> list[str]:
    return [first(item, tag) for item in results]


def test_studies_with_filters_wildcards_fields_and_pages(world: World) -> None:
    token = viewer_token(world, "north_rad")
    client = bearer_client(world, token)
    chest, synthetic = str(world.chest.StudyInstanceUID), str(world.series[0].StudyInstanceUID)
    everything = client.search_for_studies()
    assert sorted(uids(everything)) == sorted([chest, synthetic])  # not the south's study
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})  # PN: case-insensitive
    assert uids(found) == [chest]
    study = found[0]
    assert first(study, "00100010") == {"Alphabetic": "Doe^Jane"} and first(study, "00100020") == "PID-N1"
    assert first(study, "00080050") == "ACC100" and first(study, "00080020") == "20260315"
    assert first(study, "00080090") == {"Alphabetic": "Who^Sent"}  # from the file's header, not the database
    ours = world.ours  # our draft SR (and its TID 1500 and KOS) are series of the study
    assert study["00080061"]["Value"] == sorted({"CT", "SR", *(item.modality for item in ours)})
    assert first(study, "00201206") == 1 + len({item.series_uid for item in ours})
    assert first(study, "00201208") == 1 + len(ours)
    # dicomweb-client sends ``Host`` without the port: the URL is as absolute as the client's Host header
    assert first(study, RETRIEVE_URL).endswith(f"/dicomweb/studies/{chest}")
    assert first(study, "00080056") == "ONLINE" and "00080030" in study and "00200010" in study
    for filters, expected in (
        ({"PatientID": "PID-N?"}, [chest]),
        ({"AccessionNumber": "ACC*"}, [chest]),
        ({"StudyDescription": "CT*"}, [chest]),
        ({"StudyDescription": "ct*"}, []),  # LO: case-sensitive
        ({"00100020": "SYN-0001"}, [synthetic]),  # by tag
        ({"StudyDate": "20260101-20261231"}, [synthetic, chest]),
        ({"StudyDate": "-20260401"}, [chest]),
        ({"StudyDate": "20261101-"}, [synthetic]),
        ({"StudyInstanceUID": f"{chest},{synthetic}"}, [synthetic, chest]),
        ({"StudyInstanceUID": f"{chest}\\1.2.3"}, [chest]),
        ({"ModalitiesInStudy": "SR"}, [chest]),
        ({"ModalitiesInStudy": "KO"}, [chest] if any(item.modality == "KO" for item in ours) else []),
        ({"ModalitiesInStudy": "CT"}, [synthetic, chest]),
        ({"ModalitiesInStudy": "MR"}, []),
        ({"PatientName": "Doe^John"}, []),  # the south's patient
    ):
        assert uids(client.search_for_studies(search_filters=filters)) == expected, filters
    # newest study date first, one at a time with the Warning header; offset past the end: nothing
    assert uids(client.search_for_studies(limit=1)) == [synthetic]
    assert uids(client.search_for_studies(limit=1, offset=1)) == [chest]
    assert client.search_for_studies(offset=2) == []
    assert sorted(uids(client.search_for_studies(limit=1, get_remaining=True))) == sorted([chest, synthetic])
    page = httpx.get(world.base + "/studies", params={"limit": "1"}, headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and page.headers["content-type"] == "application/dicom+json"
    assert "offset=1" in page.headers["warning"] and page.headers["warning"].startswith("299 ")
    assert first(page.json()[0], RETRIEVE_URL) == f"{world.base}/studies/{synthetic}"
    fuzzy = httpx.get(
        world.base + "/studies", params={"fuzzymatching": "true"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert fuzzy.status_code == 200 and "Only literal matching" in fuzzy.headers["warning"] and len(fuzzy.json()) == 2
    # includefield: one more attribute, or all; fuzzy matching accepted (and ignored)
    fields = client.search_for_studies(
        search_filters={"PatientID": "SYN-0001"}, fields=["BodyPartExamined", "00100040"]
    )
    assert first(fields[0], "00180015") == "CHEST" and first(fields[0], "00100040") == "O"
    assert "00180015" not in client.search_for_studies(search_filters={"PatientID": "SYN-0001"})[0]
    every = client.search_for_series(synthetic, fields=["all"], fuzzymatching=True)
    assert first(every[0], "00180015") == "CHEST" and first(every[0], "0008103E") == "Chest 1.0 mm"


def test_series_and_instances_include_our_sr(world: World) -> None:
    client = basic_client(world, "north_rad")
    chest, synthetic = str(world.chest.StudyInstanceUID), str(world.series[0].StudyInstanceUID)
    series = client.search_for_series(chest)
    assert [first(item, MODALITY) for item in series] == ["CT", *(item.modality for item in world.ours)]
    assert uids(series, SERIES_UID) == [str(world.chest.SeriesInstanceUID), *(item.series_uid for item in world.ours)]
    assert first(series[1], "00200011") == 9901 and first(series[1], "00201209") == 1
    assert first(series[1], RETRIEVE_URL).endswith(f"/dicomweb/studies/{chest}/series/{world.sr_series}")
    srs = [item.series_uid for item in world.ours if item.modality == "SR"]
    assert uids(client.search_for_series(chest, search_filters={"Modality": "SR"}), SERIES_UID) == srs
    assert client.search_for_series(chest, search_filters={"SeriesNumber": "77"}) == []
    everywhere = client.search_for_series(search_filters={"Modality": "CT"})
    assert sorted(uids(everywhere)) == sorted([chest, synthetic])  # study attributes come along on /series
    assert all(first(item, "00100010") for item in everywhere)
    assert first(client.search_for_series(synthetic)[0], "0008103E") == "Chest 1.0 mm"

    slices = client.search_for_instances(synthetic, str(world.series[0].SeriesInstanceUID))
    assert uids(slices, SOP_UID) == [str(ds.SOPInstanceUID) for ds in world.series]
    assert [first(item, "00200013") for item in slices] == [1, 2, 3]
    assert (
        first(slices[0], "00280010") == 16 and first(slices[0], "00280011") == 16 and first(slices[0], "00280100") == 16
    )
    assert first(slices[0], RETRIEVE_URL).endswith(
        f"/dicomweb/studies/{synthetic}/series/{world.series[0].SeriesInstanceUID}/instances/{world.series[0].SOPInstanceUID}"
    )
    assert uids(client.search_for_instances(synthetic, search_filters={"InstanceNumber": "2"}), SOP_UID) == [
        str(world.series[1].SOPInstanceUID)
    ]
    page = client.search_for_instances(synthetic, limit=2, offset=2)
    assert uids(page, SOP_UID) == [str(world.series[2].SOPInstanceUID)] and first(page[0], MODALITY) == "CT"
    ours = client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.33"})
    assert set(uids(ours)) == {chest} and first(ours[0], "00080020") == "20260315"
    assert world.sr_series in uids(ours, SERIES_UID)
    assert client.search_for_instances(search_filters={"SOPInstanceUID": str(world.south.SOPInstanceUID)}) == []
    wanted = str(world.series[2].SOPInstanceUID)
    assert uids(client.search_for_instances(search_filters={"SOPInstanceUID": wanted}), SOP_UID) == [wanted]
    assert uids(client.search_for_series(search_filters={"Modality": "SR"})) == [chest] * len(
        {item.series_uid for item in world.ours if item.modality == "SR"}
    )


def test_bad_queries_answer_400_with_a_reason(world: World) -> None:
    bearer = {"Authorization": f"Bearer {viewer_token(world, 'north_rad')}"}
    for path, params, reason in (
        ("/studies", {"NoSuchKeyword": "x"}, "unknown attribute"),
        ("/studies", {"FFFF0000": "x"}, "unknown attribute"),
        ("/studies", {"Modality": "CT"}, "not a matching key"),
        ("/studies", {"StudyDate": "2026-01-01"}, "YYYYMMDD"),
        ("/studies", {"StudyDate": "20261301"}, "calendar date"),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}, "UID"),
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"offset": "x"}, "offset"),
        ("/studies", {"includefield": "NotAnAttribute"}, "unknown attribute"),
        ("/series", {"SeriesNumber": "two"}, "integer"),
    ):
        answer = httpx.get(world.base + path, params=params, headers=bearer)
        assert answer.status_code == 400 and reason in answer.json()["detail"], (params, answer.text)
    refused = httpx.get(world.base + "/studies", headers={"Accept": "application/dicom+xml", **bearer})
    assert refused.status_code == 406


def test_site_b_sees_nothing_of_site_a(world: World) -> None:
    north = str(world.chest.StudyInstanceUID)
    north_series = str(world.chest.SeriesInstanceUID)
    south = str(world.south.StudyInstanceUID)
    south_cookie = sign_in(world.api, "south_rad")
    clients = {
        "token": bearer_client(world, viewer_token(world, "south_rad")),
        "basic": basic_client(world, "south_rad"),
    }
    for how, client in clients.items():
        assert uids(client.search_for_studies()) == [south], how
        assert client.search_for_studies(search_filters={"StudyInstanceUID": north}) == [], how
        assert client.search_for_series(search_filters={"SeriesInstanceUID": north_series}) == [], how
        assert client.search_for_instances(search_filters={"PatientName": "Doe^Jane"}) == [], how
        for call in (
            lambda client=client: client.search_for_series(north),
            lambda client=client: client.search_for_instances(north),
            lambda client=client: client.search_for_instances(north, north_series),
        ):
            with pytest.raises(requests.HTTPError) as refused:
                call()
            assert refused.value.response.status_code == 404, how
    listed = south_cookie.get("/dicomweb/studies")
    assert listed.status_code == 200 and uids(listed.json()) == [south]
    assert south_cookie.get(f"/dicomweb/studies/{north}/series").status_code == 404
    assert south_cookie.get(f"/dicomweb/studies/{north}/instances").status_code == 404
    admin = basic_client(world, "boss")
    assert len(admin.search_for_studies()) == 3
    uploader = httpx.get(world.base + "/studies", auth=("upload", PASSWORD))
    assert uploader.status_code == 403
    assert httpx.get(world.base + "/studies").status_code == 401


def test_viewer_token_only_on_dicomweb_and_audited(world: World) -> None:
    token = viewer_token(world, "north_rad")
    api = world.api.url
    assert httpx.get(api + "/api/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert httpx.get(api + "/api/studies", cookies={COOKIE: token}).status_code == 401
    assert httpx.get(api + "/dicomweb/studies", cookies={COOKIE: token}).status_code == 401
    assert httpx.get(api + "/worklist", cookies={COOKIE: token}).status_code in (303, 401)
    assert httpx.get(api + "/dicomweb/studies", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    signed_in = sign_in(world.api, "north_rad")
    assert signed_in.post("/api/viewer-token").status_code == 403  # no CSRF token
    uploader = sign_in(world.api, "upload")
    refused = uploader.post(
        "/api/viewer-token", headers={"X-CSRF-Token": csrf_token_for_session(uploader.cookies[COOKIE])}
    )
    assert refused.status_code == 403
    with session_scope(world.settings.database_url) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "viewer_token.issued")).all()
        assert events and {event.actor for event in events} >= {"north_rad", "south_rad"}
        assert all(token not in json.dumps(event.detail) for event in events)


def test_cors_for_the_configured_origin_only(world: World) -> None:
    token = viewer_token(world, "north_rad")
    preflight = httpx.options(
        world.base + "/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert int(preflight.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in preflight.headers
    answer = httpx.get(world.base + "/studies", headers={"Origin": VIEWER, "Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == VIEWER
    assert "Warning" in answer.headers["access-control-expose-headers"]
    assert "Origin" in answer.headers["vary"]
    other = httpx.get(
        world.base + "/studies", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {token}"}
    )
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    outside = httpx.get(world.api.url + "/api/studies", headers={"Origin": VIEWER})
    assert "access-control-allow-origin" not in outside.headers
    foreign_preflight = httpx.options(
        world.base + "/studies", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in foreign_preflight.headers


def test_cors_is_off_by_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pacs-vlm.sqlite'}"
    upgrade(url)
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=url, min_free_bytes=0))) as client:
        preflight = client.options(
            "/dicomweb/studies", headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"}
        )
        answer = client.get("/dicomweb/studies", headers={"Origin": VIEWER})
    assert answer.status_code == 401 and preflight.status_code in (401, 405)
    assert not any(name.lower().startswith("access-control-") for name in (*preflight.headers, *answer.headers))


def test_stow_answer_carries_retrieve_urls_that_qido_lists(world: World) -> None:
    answer = stow(world.api, multipart(dicom("MR_small.dcm")), user="upload")
    assert answer.status_code in (200, 202), answer.text
    body = answer.json()
    mr = pydicom.dcmread(pydicom_test_file("MR_small.dcm"), stop_before_pixels=True)
    study_url = f"{world.base}/studies/{mr.StudyInstanceUID}"
    assert body[RETRIEVE_URL]["Value"] == [study_url]
    stored = body["00081199"]["Value"][0]
    assert stored[RETRIEVE_URL]["Value"] == [f"{study_url}/series/{mr.SeriesInstanceUID}/instances/{mr.SOPInstanceUID}"]
    found = httpx.get(
        world.base + "/studies", params={"StudyInstanceUID": str(mr.StudyInstanceUID)}, auth=("north_rad", PASSWORD)
    )
    assert [first(item, RETRIEVE_URL) for item in found.json()] == [study_url]
