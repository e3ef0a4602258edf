"""``pacs-vlm sites`` and ``pacs-vlm users``: who may sign in to the review app, and for which site."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from integration.cli import console, fail, load_settings, operator
from integration.store.tables import UserRole

sites_app = typer.Typer(help="Hospital sites (radiologists see only their site's studies).", no_args_is_help=True)
users_app = typer.Typer(help="Users of the review app: radiologists, admins and uploaders.", no_args_is_help=True)


def _read_password(from_stdin: bool) -> str:
    """Read the password from one line of stdin, or prompt for it twice without echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@sites_app.command("add")
def sites_add(
    code: Annotated[str, typer.Argument(help="Short unique code, e.g. NORTH (stored upper case).")],
    name: Annotated[str, typer.Argument(help="Human-readable name.")],
) -> None:
    """Add a site."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.session import session_scope
    from integration.store.users import UserError, create_site

    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            site = create_site(session, code, name)
    except UserError as exc:
        raise fail(escape(str(exc)), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    console.print(f"site {site.code} added", markup=False)


@sites_app.command("list")
def sites_list() -> None:
    """List the sites."""
    from sqlalchemy import select

    from integration.store.session import session_scope
    from integration.store.tables import Site

    settings = load_settings()
    table = Table("code", "name")
    with session_scope(settings.database_url) as session:
        for site in session.scalars(select(Site).order_by(Site.code)):
            table.add_row(site.code, Text(site.name))
    Console().print(table)


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Unique sign-in name.")],
    role: Annotated[UserRole, typer.Option(help="What the user may do.", case_sensitive=False)],
    site: Annotated[
        list[str] | None,
        typer.Option(
            help="Site code; repeat for a user of several sites (--site A --site B); required except for admins."
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from one line of stdin instead of prompting.")
    ] = False,
    person_name: Annotated[
        str | None,
        typer.Option(help='The name signed reports carry, as a DICOM person name: "Doe^Jane" (family^given).'),
    ] = None,
) -> None:
    """Add a user; the password (at least 12 characters) is stored only as an argon2id hash."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.session import session_scope
    from integration.store.users import UserError, check_password_strength, create_user, validate_person_name

    settings = load_settings()
    try:
        if person_name is not None:
            validate_person_name(person_name)  # before the password prompt
    except UserError as exc:
        raise fail(escape(str(exc)), 2) from None
    password = _read_password(password_stdin)
    try:
        check_password_strength(password)
        with session_scope(settings.database_url) as session:
            user = create_user(session, username, password, role, site, person_name)
    except UserError as exc:
        raise fail(escape(str(exc)), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    console.print(f"user {user.username} ({user.role.value}) added", markup=False)


@users_app.command("list")
def users_list() -> None:
    """List the users with their role, sites and whether they are active."""
    from integration.store.session import session_scope
    from integration.store.users import list_users

    settings = load_settings()
    table = Table("username", "person name", "role", "sites", "active", "created")
    with session_scope(settings.database_url) as session:
        for user, codes in list_users(session):
            table.add_row(
                Text(user.username),
                Text(user.person_name or ""),
                user.role.value,
                ", ".join(codes) or ("(all sites)" if user.role is UserRole.ADMIN else "(none)"),
                "yes" if user.active else "no",
                user.created_at.strftime("%Y-%m-%d %H:%M"),
            )
    Console().print(table)


def _set_active(username: str, active: bool) -> None:
    """Deactivate or activate a user, with a clear error for unknown users or an unusable database."""
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.session import session_scope
    from integration.store.users import UserError, activate_user, deactivate_user

    settings = load_settings()
    change = deactivate_user if not active else activate_user
    try:
        with session_scope(settings.database_url) as session:
            change(session, username, actor=operator())
    except UserError as exc:
        raise fail(escape(str(exc)), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None


@users_app.command("deactivate")
def users_deactivate(username: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Stop a user from signing in; their open sessions end at once."""
    _set_active(username, False)
    console.print(f"user {username} deactivated; their sessions are ended", markup=False)


@users_app.command("activate")
def users_activate(username: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Let a deactivated user sign in again (with the same password)."""
    _set_active(username, True)
    console.print(f"user {username} activated", markup=False)


@users_app.command("sites")
def users_sites(
    username: Annotated[str, typer.Argument(help="The user.")],
    site: Annotated[
        list[str] | None, typer.Option(help="A site code; repeat for several. None: no site (admins).")
    ] = None,
) -> None:
    """Set the sites a user works for (replacing the ones they had); audited ``user.sites_changed``.

    A user who signs in through single sign-on gets their sites from the provider's claims again at the next
    sign-in.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from integration.store.audit import add_event
    from integration.store.session import session_scope
    from integration.store.sso import set_user_sites
    from integration.store.tables import User
    from integration.store.users import UserError

    settings = load_settings()
    try:
        with session_scope(settings.database_url) as session:
            user = session.scalar(select(User).where(User.username == username.strip()))
            if user is None:
                raise UserError(f"unknown user {username!r}: see 'pacs-vlm users list'")
            codes = set_user_sites(session, user, site or [])
            add_event(
                session,
                actor=operator(),
                action="user.sites_changed",
                object_type="user",
                object_id=str(user.id),
                detail={"username": user.username, "sites": codes},
            )
    except UserError as exc:
        raise fail(escape(str(exc)), 2) from None
    except SQLAlchemyError as exc:
        raise fail(f"cannot use the database: {type(exc).__name__}; run 'pacs-vlm db upgrade'?", 2) from None
    console.print(f"user {username} sites: {', '.join(codes) or '(all sites)'}", markup=False)
