"""The worklist radiologists drive and the claims on studies, tried in headless Chromium as radiologists would.

One ``pacs-vlm api`` process (times shown in ``Europe/Berlin``, claims lasting 30 minutes), one PostgreSQL
database and one Chromium serve the module.  A few studies are real DICOM files through the listener's intake
with drafts recorded as the worker records them; the 520 studies that make the worklist longer than one answer
of 500 rows are inserted as rows directly (no files, no drafts: ingesting them as DICOM would take minutes and
paging looks only at rows).  Tests search by a part of the name, the MRN, the accession number and the
description; reload and come back from a study with the filters kept; page past row 500; see who is reading a
study from a second radiologist's seat, be refused, take it over and release it; let a claim expire; and read
times in the configured zone.  The new routes' authorization is checked over HTTP: another site's study is 404,
an uploader and an administrator are refused, and the page forms need their CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pydicom
import pytest
from sqlalchemy import delete, select, update

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file
from integration.store.reading_tables import StudyClaim
from integration.store.session import session_scope
from integration.store.tables import AuditEvent, Site, Study, StudyState, User, utcnow
from tests.support.instances import ingest
from tests.support.review_app import (
    copy_with_new_uids,
    csrf_of,
    draft,
    evidence_of,
    review_world,
    sign_in,
    signed_in_page,
)
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_auth import add_user

#: The module's own Redis database (the api and the assembler share it).
REDIS_DB = 7
ZONE = "Europe/Berlin"
#: The dash of the worklist's "1\N{EN DASH}100 of 520".
DASH = "\N{EN DASH}"
BULK = 520


@dataclass
class Module:
    settings: Settings
    api: ApiProcess
    jane: pydicom.Dataset  # NORTH, Doe^Jane, drafted: search and filters
    read: pydicom.Dataset  # NORTH, Roe^Richard, drafted: two radiologists
    expiring: pydicom.Dataset  # NORTH, Poe^Edgar, drafted: an expired claim
    south: pydicom.Dataset  # SOUTH, drafted: another site


def drafted(settings: Settings, tmp: Path, ae: str, **attributes: Any) -> pydicom.Dataset:
    """One MR instance of a new study stored as the listener does, completed and drafted."""
    path = copy_with_new_uids(pydicom_test_file("MR_small.dcm"), tmp / f"{attributes['PatientID']}.dcm", **attributes)
    ds = ingest(settings, path, utcnow() - timedelta(seconds=120), ae)
    assert StudyAssembler(settings).run_once().jobs_created == 1
    finding = {"text": "No acute abnormality.", "images": [1]}
    draft(settings, str(ds.StudyInstanceUID), [finding], [evidence_of(ds, 1)])
    return ds


def bulk_rows(url: str) -> None:
    """:data:`BULK` routine NORTH studies as rows only, received a day ago and earlier (after the real ones)."""
    now = utcnow()
    with session_scope(url) as session:
        north = session.scalar(select(Site.id).where(Site.code == "NORTH"))
        for number in range(BULK):
            moment = now - timedelta(days=1, minutes=number)
            session.add(
                Study(
                    study_uid=f"1.2.826.0.1.3680043.10.543.{number + 1}",
                    state=StudyState.STABLE,
                    calling_ae="CT1",
                    first_received_at=moment,
                    last_received_at=moment,
                    stable_after=moment,
                    site_id=north,
                    patient_id=f"BULK-{number:04d}",
                    patient_name=f"Bulk^Patient{number:04d}",
                    accession_number=f"BK{number:05d}",
                    study_description="BULK ROW",
                )
            )


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    review = review_world(postgres, redis_server, tmp_path_factory.mktemp("worklist"), REDIS_DB)
    settings, tmp, url = review.settings, review.folder, review.settings.database_url
    add_user(url, "north_rad2", "radiologist", "NORTH")
    with session_scope(url) as session:
        session.execute(update(User).where(User.username == "north_rad").values(person_name="Lee^Ann"))
    files = tmp / "files"
    files.mkdir()
    jane = drafted(
        settings,
        files,
        "MR1",
        PatientName="Doe^Jane",
        PatientID="MRN-4711",
        AccessionNumber="ACC-9001",
        StudyDescription="KNEE LEFT 3T",
    )
    read = drafted(settings, files, "MR1", PatientName="Roe^Richard", PatientID="MRN-5000", StudyDescription="BRAIN")
    expiring = drafted(settings, files, "MR1", PatientName="Poe^Edgar", PatientID="MRN-6000", StudyDescription="BRAIN")
    south = drafted(settings, files, "SOUTH1", PatientName="Doe^John", PatientID="S-1", StudyDescription="BRAIN")
    bulk_rows(url)
    api = review.start_api(PACSVLM_TIMEZONE=ZONE, PACSVLM_CLAIM_MINUTES="30")
    yield Module(settings, api, jane, read, expiring, south)
    review.close()


def signed_in(chromium: Any, world: Module, username: str) -> Any:
    """A fresh browser context signed in with the form; returns its page (on the worklist)."""
    page = signed_in_page(chromium, world.api, username)
    assert page.url.endswith("/worklist"), page.url
    return page


def search(page: Any, text: str) -> list[str]:
    """Type a search into the worklist's box, press Enter; return the studies listed."""
    page.fill("#worklist-search", text)
    with page.expect_navigation():
        page.press("#worklist-search", "Enter")
    return shown(page)


def shown(page: Any) -> list[str]:
    """The studies the worklist page lists, in its order."""
    hrefs = page.locator("a.open-study").evaluate_all("links => links.map(link => link.getAttribute('href'))")
    return [str(href).split("?")[0].removeprefix("/studies/") for href in hrefs]


def uid(ds: pydicom.Dataset) -> str:
    return str(ds.StudyInstanceUID)


def row(page: Any, ds: pydicom.Dataset) -> Any:
    return page.locator("table.worklist tbody tr", has=page.locator(f'a[href^="/studies/{uid(ds)}"]'))


def row_text(page: Any, ds: pydicom.Dataset) -> str:
    """A worklist row's text as written (not as the stylesheet's capitals show it)."""
    return str(row(page, ds).text_content())


def test_search_by_a_part_of_the_name_the_mrn_the_accession_and_the_description(world: Module, chromium: Any) -> None:
    page = signed_in(chromium, world, "north_rad")
    jane = uid(world.jane)
    for text in ("doe", "jane doe", "Doe^Jane", "DOE, jane", "mrn-4711", "4711", "acc-9001", "knee", "Knee left"):
        assert search(page, text) == [jane], text
    # Another site's Doe stays out; wildcards typed are matched as themselves.
    assert search(page, "john") == []
    assert search(page, "%") == [] and search(page, "_") == []
    assert search(page, "bulk") and page.locator("#worklist-count").inner_text() == f"1{DASH}100 of {BULK} studies"
    page.context.close()


def test_filters_survive_a_reload_and_the_way_back_from_a_study(world: Module, chromium: Any) -> None:
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/worklist?q=doe&status=draft&sort=oldest&modality=MR")
    page.reload()
    assert page.input_value("#worklist-search") == "doe"
    assert page.locator("select[name=status]").input_value() == "draft"
    assert page.locator("select[name=sort]").input_value() == "oldest"
    assert shown(page) == [uid(world.jane)]

    with page.expect_navigation():
        page.locator("a.open-study").first.click()
    assert "list=" in page.url and uid(world.jane) in page.url
    with page.expect_navigation():
        page.click("#back-to-worklist")
    assert re.search(r"/worklist\?.*q=doe", page.url), page.url
    assert "sort=oldest" in page.url and "status=draft" in page.url and "modality=MR" in page.url
    assert page.input_value("#worklist-search") == "doe"
    assert shown(page) == [uid(world.jane)]
    page.context.close()


def test_paging_past_500_rows_keeps_the_filters(world: Module, chromium: Any) -> None:
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/worklist?q=bulk&sort=oldest")
    assert page.locator("#worklist-count").inner_text() == f"1{DASH}100 of {BULK} studies"
    first_page = shown(page)
    with page.expect_navigation():
        page.locator("a.next-page").first.click()
    assert "q=bulk" in page.url and "sort=oldest" in page.url and "offset=100" in page.url
    assert page.locator("#worklist-count").inner_text() == f"101{DASH}200 of {BULK} studies"
    assert not set(first_page) & set(shown(page))

    page.goto(f"{world.api.url}/worklist?q=bulk&sort=oldest&limit=500&offset=500")
    assert page.locator("#worklist-count").inner_text() == f"501{DASH}{BULK} of {BULK} studies"
    assert len(shown(page)) == BULK - 500 and page.locator("a.next-page").count() == 0
    with page.expect_navigation():
        page.locator("a.previous-page").first.click()
    assert page.locator("#worklist-count").inner_text() == f"1{DASH}500 of {BULK} studies"

    # The JSON worklist pages the same way and says how many match.
    client = sign_in(world.api, "north_rad")
    answer = client.get("/api/studies", params={"q": "bulk", "limit": 500, "offset": 500})
    assert answer.status_code == 200 and answer.headers["x-total-count"] == str(BULK)
    assert len(answer.json()) == BULK - 500
    refused = client.get("/api/studies", params={"limit": 501})
    assert refused.status_code == 422 and "limit" in refused.text
    assert client.get("/api/studies", params={"offset": -1}).status_code == 422
    page.context.close()


def test_a_second_radiologist_sees_who_reads_is_refused_and_takes_over(world: Module, chromium: Any) -> None:
    study = uid(world.read)
    first = signed_in(chromium, world, "north_rad")
    first.goto(f"{world.api.url}/studies/{study}")
    assert first.locator("#claim-mine").count() == 1

    second = signed_in(chromium, world, "north_rad2")
    second.goto(f"{world.api.url}/worklist?q=roe")
    assert "being read by Lee, Ann" in row_text(second, world.read)
    second.goto(f"{world.api.url}/worklist?claim=available")
    assert study not in shown(second)
    second.goto(f"{world.api.url}/worklist?q=roe")
    with second.expect_navigation():
        second.locator("a.open-study").first.click()
    banner = second.locator("#claim-banner").inner_text()
    assert re.search(r"Lee, Ann is reading this study since \d\d:\d\d CES?T \(until \d\d:\d\d CES?T", banner), banner

    # Their change is refused with a page that names the reader.
    with second.expect_navigation():
        second.locator("#finding-0 button[data-action='accept']").click()
    assert "north_rad is reading this study" in second.content()

    # Taking over: the banner goes, and now the first radiologist's change is refused.
    second.goto(f"{world.api.url}/studies/{study}?list=q%3Droe")
    with second.expect_navigation():
        second.click("#take-over")
    assert second.locator("#claim-banner").count() == 0 and second.locator("#claim-mine").count() == 1
    assert "list=q%3Droe" in second.url
    with first.expect_navigation():
        first.locator("#finding-0 button[data-action='accept']").click()
    assert "north_rad2 is reading this study" in first.content()

    # Releasing goes back to the worklist, where nobody reads it any more.
    second.goto(f"{world.api.url}/studies/{study}?list=q%3Droe")
    with second.expect_navigation():
        second.click("#release-claim")
    assert second.url.endswith("/worklist?q=roe")
    assert "being read" not in row_text(second, world.read)
    with session_scope(world.settings.database_url) as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.detail).where(
                AuditEvent.object_id == study, AuditEvent.action.like("study.claim.%")
            )
        ).all()
    assert {(actor, action) for actor, action, _ in events} == {
        ("north_rad2", "study.claim.take_over"),
        ("north_rad2", "study.claim.release"),
    }
    assert all("Roe" not in str(detail) for *_, detail in events)
    first.context.close()
    second.context.close()


def test_an_expired_claim_leaves_the_study_free(world: Module, chromium: Any) -> None:
    now = utcnow()
    with session_scope(world.settings.database_url) as session:
        study_id = session.scalar(select(Study.id).where(Study.study_uid == uid(world.expiring)))
        holder = session.scalar(select(User.id).where(User.username == "north_rad"))
        assert study_id is not None and holder is not None
        session.add(
            StudyClaim(
                study_id=study_id,
                user_id=holder,
                claimed_at=now - timedelta(hours=1),
                expires_at=now - timedelta(minutes=1),
            )
        )
    page = signed_in(chromium, world, "north_rad2")
    page.goto(f"{world.api.url}/worklist?q=poe&claim=available")
    assert shown(page) == [uid(world.expiring)]
    assert "being read" not in row_text(page, world.expiring)
    page.goto(f"{world.api.url}/studies/{uid(world.expiring)}")
    assert page.locator("#claim-mine").count() == 1 and page.locator("#claim-banner").count() == 0
    page.goto(f"{world.api.url}/worklist?claim=mine")
    assert uid(world.expiring) in shown(page)
    assert "you" in str(row(page, world.expiring).locator("td.claim").text_content())

    # A claim lasts claim_minutes (30 here) from the last activity.
    client = sign_in(world.api, "north_rad2")
    token = csrf_of(client.get("/worklist").text)
    answer = client.post(f"/api/studies/{uid(world.expiring)}/claim", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200, answer.text
    held = answer.json()
    lasts = datetime.fromisoformat(held["expires_at"]) - utcnow()
    assert timedelta(minutes=29) < lasts <= timedelta(minutes=30) and held["claimed_by"] == "north_rad2"
    page.context.close()


def test_times_are_shown_in_the_configured_zone(world: Module, chromium: Any) -> None:
    with session_scope(world.settings.database_url) as session:
        received = session.scalar(select(Study.last_received_at).where(Study.study_uid == uid(world.jane)))
    assert received is not None
    expected = received.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M %Z")
    assert expected.endswith((" CET", " CEST"))
    page = signed_in(chromium, world, "north_rad")
    page.goto(f"{world.api.url}/worklist?q=jane")
    cell = row(page, world.jane).locator("time").first
    assert cell.inner_text() == expected
    assert cell.get_attribute("datetime") == received.isoformat() and received.isoformat().endswith("+00:00")
    page.goto(f"{world.api.url}/studies/{uid(world.jane)}")
    assert expected in page.locator(".study-header").inner_text()
    page.context.close()


def test_claim_routes_are_for_radiologists_of_the_site_with_a_csrf_token(world: Module) -> None:
    south, read = uid(world.south), uid(world.read)
    with session_scope(world.settings.database_url) as session:  # whatever the browser tests left
        session.execute(delete(StudyClaim))
    rad = sign_in(world.api, "north_rad")
    token = csrf_of(rad.get("/worklist").text)
    json_token = {"X-CSRF-Token": token}
    # Another site's study answers 404, like one that does not exist.
    assert rad.post(f"/api/studies/{south}/claim", headers=json_token).status_code == 404
    assert rad.delete(f"/api/studies/{south}/claim", headers=json_token).status_code == 404
    assert rad.post(f"/studies/{south}/claim", data={"csrf_token": token}).status_code == 404
    assert rad.post(f"/studies/{south}/release", data={"csrf_token": token}).status_code == 404
    # Without the token nothing happens.
    assert rad.post(f"/api/studies/{read}/claim").status_code == 403
    assert rad.delete(f"/api/studies/{read}/claim").status_code == 403
    assert rad.post(f"/studies/{read}/claim", data={}).status_code == 403
    assert rad.post(f"/studies/{read}/release", data={"csrf_token": "0" * 64}).status_code == 403
    # A claim held by another radiologist: 409 naming them, unless taken over.
    other = sign_in(world.api, "north_rad2")
    other_token = {"X-CSRF-Token": csrf_of(other.get("/worklist").text)}
    assert other.post(f"/api/studies/{read}/claim", headers=other_token).status_code == 200
    refused = rad.post(f"/api/studies/{read}/claim", headers=json_token, json={"take_over": False})
    assert refused.status_code == 409 and "north_rad2 is reading this study" in refused.text
    assert re.search(r"claimed until \d\d:\d\d CES?T", refused.text), refused.text  # the hospital's zone
    assert rad.post(f"/api/studies/{read}/claim", headers=json_token, json={"take_over": "maybe"}).status_code == 422
    taken = rad.post(f"/api/studies/{read}/claim", headers=json_token, json={"take_over": True})
    assert taken.status_code == 200 and taken.json()["claimed_by"] == "north_rad"
    # Releasing someone else's claim releases nothing; one's own, once.
    assert other.delete(f"/api/studies/{read}/claim", headers=other_token).json()["released"] is False
    assert rad.delete(f"/api/studies/{read}/claim", headers=json_token).json() == {"study_uid": read, "released": True}
    # Uploaders and administrators claim nothing.
    uploader = sign_in(world.api, "upload")
    up_token = csrf_of(uploader.get("/upload").text)
    assert uploader.post(f"/api/studies/{read}/claim", headers={"X-CSRF-Token": up_token}).status_code == 403
    assert uploader.post(f"/studies/{read}/claim", data={"csrf_token": up_token}).status_code == 403
    admin = sign_in(world.api, "boss")
    admin_token = csrf_of(admin.get("/worklist").text)
    answer = admin.post(f"/api/studies/{read}/claim", headers={"X-CSRF-Token": admin_token})
    assert answer.status_code == 403 and "only radiologists claim studies" in answer.text
    page = admin.post(f"/studies/{read}/claim", data={"csrf_token": admin_token})
    assert page.status_code == 403 and "only radiologists claim studies" in page.text
    # An administrator opening a draft claims nothing.
    admin.get(f"/studies/{read}")
    assert admin.get("/api/studies", params={"q": "roe"}).json()[0]["claimed_by"] is None


def test_the_next_study_route_is_for_readers_and_never_gives_away_another_sites_study(world: Module) -> None:
    south = uid(world.south)
    with session_scope(world.settings.database_url) as session:  # whatever the other tests left
        session.execute(delete(StudyClaim))
    anonymous = httpx.Client(base_url=world.api.url, timeout=30).get("/worklist/next")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    refused = sign_in(world.api, "upload").get("/worklist/next")
    assert refused.status_code == 403 and "this page is for radiologists and administrators" in refused.text
    rad = sign_in(world.api, "north_rad")
    top = rad.get("/worklist/next")
    assert top.status_code == 303
    # Another site's study as the one just left is as unknown as a made-up one: the reading starts from the top,
    # and neither answer names it; a value that is no UID is ignored.
    for after in (south, "1.2.3.999999", "x' OR 1=1"):
        answer = rad.get("/worklist/next", params={"after": after})
        assert answer.status_code == 303 and answer.headers["location"] == top.headers["location"]
        assert south not in answer.headers["location"]


def test_received_days_are_the_hospitals_days(world: Module) -> None:
    """00:30 in Berlin on 15 March is 23:30 UTC on the 14th: the worklist's day filter says the 15th."""
    url, jane = world.settings.database_url, uid(world.jane)
    with session_scope(url) as session:
        was = session.scalar(select(Study.last_received_at).where(Study.study_uid == jane))
        session.execute(
            update(Study)
            .where(Study.study_uid == jane)
            .values(last_received_at=datetime(2026, 3, 14, 23, 30, tzinfo=UTC))
        )
    try:
        client = sign_in(world.api, "north_rad")

        def listed(**days: str) -> list[str]:
            answer = client.get("/api/studies", params={"q": "jane", **days})
            assert answer.status_code == 200, answer.text
            return [row["study_uid"] for row in answer.json()]

        assert listed(received_from="2026-03-15", received_to="2026-03-15") == [jane]
        assert listed(received_to="2026-03-14") == [] and listed(received_from="2026-03-16") == []
        page = client.get("/worklist", params={"q": "jane", "received_from": "2026-03-15", "received_to": "2026-03-15"})
        assert jane in page.text
    finally:
        with session_scope(url) as session:
            session.execute(update(Study).where(Study.study_uid == jane).values(last_received_at=was))
