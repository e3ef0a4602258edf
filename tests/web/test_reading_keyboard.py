"""Reading a worklist with the keyboard alone, in headless Chromium, as a radiologist reading sixty studies a day.

The whole benchmark runs here (``bench.reading``: 20 normal studies, an api process, Chromium), so the promise
"sign 20 studies with the keyboard alone" is checked on every run, not only when someone benchmarks.  A second
test tries the edges a reader meets: a study another radiologist has claimed is skipped by "sign and open next",
the filtered worklist travels along, a capital S typed in a box never signs, and the end of the list is said.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bench.reading import READER, SITE, check, read_worklist, signed_studies, store_studies
from integration.store.claims import claim_study
from integration.store.session import session_scope
from integration.store.tables import Report, ReportStatus, Study, User, UserRole, utcnow
from integration.store.users import create_user
from tests.web.conftest import ApiProcess


def test_twenty_normal_studies_are_signed_with_the_keyboard_alone(
    migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    reading = read_worklist(migrated_postgres_url, redis_url, tmp_path, 20)
    check(reading, migrated_postgres_url)  # each read once, in the worklist's order, signed once, notice at the end
    assert len(reading.read) == 20
    assert all(study.keys == ("a", "j", "x", "Shift+S") for study in reading.read)
    assert signed_studies(migrated_postgres_url, reading.drafted) == dict.fromkeys(reading.drafted, 1)
    assert reading.final_notice == "No more studies to read in this list."
    print(f"reading seconds_per_study={reading.median:.3f}")


@pytest.fixture
def three_studies(migrated_postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[ApiProcess, list[str]]]:
    """Three drafted studies (newest first in the worklist), an api, and a second radiologist of the site."""
    data_dir = tmp_path / "data"
    drafted = store_studies(migrated_postgres_url, data_dir, 3)
    with session_scope(migrated_postgres_url) as session:
        create_user(session, "other", READER[1], UserRole.RADIOLOGIST, SITE)
    env = {
        "PACSVLM_DATABASE_URL": migrated_postgres_url,
        "PACSVLM_BROKER_URL": redis_url,
        "PACSVLM_MIN_FREE_BYTES": "0",
    }
    api = ApiProcess(data_dir, env).start()  # its data folder is the one the studies were stored in
    yield api, list(reversed(drafted))
    api.stop()


def _status(url: str, study_uid: str) -> ReportStatus:
    with session_scope(url) as session:
        return session.scalars(
            select(Report.status).join(Study, Report.study_id == Study.id).where(Study.study_uid == study_uid)
        ).one()


def test_sign_and_next_skips_a_claimed_study_and_ends_at_the_worklist(
    three_studies: tuple[ApiProcess, list[str]], migrated_postgres_url: str, chromium: Any
) -> None:
    api, (first, claimed, last) = three_studies
    with session_scope(migrated_postgres_url) as session:
        study_id = session.scalars(select(Study.id).where(Study.study_uid == claimed)).one()
        other_id = session.scalars(select(User.id).where(User.username == "other")).one()
        claim_study(session, study_id, other_id, minutes=20, now=utcnow())

    page = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(api.url + "/login")
    page.fill("#username", READER[0])
    page.fill("#password", READER[1])
    with page.expect_navigation():
        page.press("#password", "Enter")
    page.goto(api.url + "/worklist?status=draft")
    assert page.locator("#no-more-studies").is_hidden()

    # o opens the first study to read of this (filtered) list; the list travels along.
    with page.expect_navigation():
        page.keyboard.press("o")
    assert f"/studies/{first}?" in page.url and "list=status%3Ddraft" in page.url
    assert page.evaluate("document.activeElement.id") == "finding-0"  # focus where reading starts

    # A capital S typed in a box is text, never a signature.
    page.keyboard.press("i")
    page.keyboard.type("Stable. See Shift+S.")
    page.keyboard.press("Shift+S")
    page.wait_for_timeout(300)
    assert f"/studies/{first}?" in page.url and _status(migrated_postgres_url, first) is ReportStatus.DRAFT
    assert "Stable. See Shift+S.S" in page.locator("#impression-text").input_value()

    # Esc leaves the box; x attests the two unreviewed findings; Shift+S signs (the typed impression with it)
    # and opens the next study to read: the claimed one is skipped.
    page.keyboard.press("Escape")
    page.keyboard.press("x")
    assert page.locator("#confirm-unreviewed").is_checked()
    with page.expect_navigation():
        page.keyboard.press("Shift+S")
    assert _status(migrated_postgres_url, first) is ReportStatus.SIGNED
    assert f"/studies/{last}?" in page.url and "list=status%3Ddraft" in page.url

    # A review action keeps the list; then the last study is signed and the worklist says none is left.
    with page.expect_navigation():
        page.keyboard.press("a")
    assert "list=status%3Ddraft" in page.url and "#finding-0" in page.url
    page.keyboard.press("j")
    page.keyboard.press("x")
    with page.expect_navigation():
        page.keyboard.press("Shift+S")
    assert _status(migrated_postgres_url, last) is ReportStatus.SIGNED
    assert _status(migrated_postgres_url, claimed) is ReportStatus.DRAFT
    assert "/worklist?status=draft#no-more-studies" in page.url
    notice = page.locator("#no-more-studies")
    assert notice.is_visible() and notice.inner_text() == "No more studies to read in this list."
    assert page.evaluate("document.activeElement.id") == "no-more-studies"
    assert signed_studies(migrated_postgres_url, [first, last]) == {first: 1, last: 1}
