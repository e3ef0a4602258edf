"""HTTPS for ``pacs-vlm api``: served directly (``--ssl-certfile/--ssl-keyfile``) or behind a TLS-terminating proxy.

Real ``pacs-vlm api`` processes on PostgreSQL and Redis; certificates made by the test.  The reverse proxy is
played by the test's own HTTP client sending the headers nginx sets (``X-Forwarded-Proto``/``-For``).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.certificates import Certificates, make_certificates
from tests.support.records import db_rows
from tests.support.services import free_port, stop_process, wait_for_port
from tests.web.conftest import run_api
from tests.web.test_auth import COOKIE, PASSWORD, add_user


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def env(migrated_postgres_url: str, redis_url: str) -> dict[str, str]:
    return {
        "PACSVLM_DATABASE_URL": migrated_postgres_url,
        "PACSVLM_BROKER_URL": redis_url,
        "PACSVLM_MIN_FREE_BYTES": "0",
    }


@pytest.fixture
def api_with(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., tuple[int, Path]]]:
    """Start ``pacs-vlm api`` with extra command-line options; returns its port and log file."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> tuple[int, Path]:
        port = free_port()
        data_dir = tmp_path / f"api{len(started)}"
        log = data_dir / "api.log"
        data_dir.mkdir()
        started.append(run_api(data_dir, env, "--port", str(port), *options, log=log))
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
        except TimeoutError:
            raise RuntimeError(f"api did not start:\n{log.read_text(errors='replace')}") from None
        return port, log

    yield start
    for process in started:
        stop_process(process)


def login(url: str, verify: ssl.SSLContext | bool = True, headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.post(
        url + "/api/login", json={"username": "rad", "password": PASSWORD}, headers=headers, verify=verify, timeout=10
    )
    assert response.status_code == 200, response.text
    return response


def session_cookie_is_secure(response: httpx.Response) -> bool:
    [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")]
    return "secure" in [attribute.strip().lower() for attribute in cookie.split(";")]


def tls_version(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def test_https_served_directly(
    api_with: Callable[..., tuple[int, Path]], certs: Certificates, migrated_postgres_url: str
) -> None:
    add_user(migrated_postgres_url, "rad", "admin", None)
    port, log = api_with("--ssl-certfile", str(certs.server.certificate), "--ssl-keyfile", str(certs.server.key))
    trust = ssl.create_default_context(cafile=certs.ca)

    response = httpx.get(f"https://localhost:{port}/health", verify=trust, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert session_cookie_is_secure(login(f"https://localhost:{port}", trust))
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust our CA
        httpx.get(f"https://localhost:{port}/health", timeout=10)

    tls12 = ssl.create_default_context(cafile=certs.ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tls_version(port, tls12) == "TLSv1.2"
    old = ssl.create_default_context(cafile=certs.ca)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it is the point of the test
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):  # refused by the server, or not even offered by this OpenSSL
        tls_version(port, old)
    cbc = ssl.create_default_context(cafile=certs.ca)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA")  # no AEAD: not in the BCP 195 list
    with pytest.raises(ssl.SSLError):  # asyncio closes without flushing the alert: the client sees EOF
        tls_version(port, cbc)

    assert httpx.get(f"https://localhost:{port}/health", verify=trust, timeout=10).status_code == 200
    assert "https://127.0.0.1" in log.read_text()


def test_behind_a_reverse_proxy_the_forwarded_scheme_makes_the_cookie_secure(
    api_with: Callable[..., tuple[int, Path]], env: dict[str, str], migrated_postgres_url: str
) -> None:
    add_user(migrated_postgres_url, "rad", "admin", None)
    forged_headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.6.6.6"}
    by_default, _ = api_with()  # issue 13 item 9: no proxy is trusted unless configured (127.0.0.1 was)
    assert not session_cookie_is_secure(login(f"http://127.0.0.1:{by_default}", headers=forged_headers))

    env["PACSVLM_FORWARDED_ALLOW_IPS"] = "127.0.0.1"  # the proxy on this host terminates TLS, speaks HTTP to us
    port, _ = api_with()
    url = f"http://127.0.0.1:{port}"
    assert session_cookie_is_secure(login(url, headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}))
    assert not session_cookie_is_secure(login(url))  # plain HTTP straight to the API: no Secure flag

    untrusted, _ = api_with("--forwarded-allow-ips", "10.9.9.9")  # only that proxy's headers count
    assert not session_cookie_is_secure(login(f"http://127.0.0.1:{untrusted}", headers=forged_headers))
    sources = db_rows(migrated_postgres_url, "SELECT source FROM audit_events WHERE action = 'auth.login' ORDER BY id")
    assert [source for (source,) in sources] == ["127.0.0.1", "10.1.2.3", "127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ssl-certfile", "{cert}"], "HTTPS needs both --ssl-certfile and --ssl-keyfile"),
        (["--ssl-certfile", "{dir}/missing.pem", "--ssl-keyfile", "{key}"], "does not exist"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{other_key}"], "does not match"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted}"], "is encrypted"),
    ],
    ids=["key-missing", "missing-file", "key-mismatch", "encrypted-key"],
)
def test_bad_https_options_stop_the_api_with_a_clear_error(
    certs: Certificates, env: dict[str, str], tmp_path: Path, options: list[str], message: str
) -> None:
    names = {
        "dir": tmp_path,
        "cert": certs.server.certificate,
        "key": certs.server.key,
        "other_key": certs.client.key,
        "encrypted": certs.encrypted_key,
    }
    args = [option.format(**names) for option in options]
    process = run_api(tmp_path / "data", env, "--port", str(free_port()), *args)
    output, _ = process.communicate(timeout=60)
    text = output.decode(errors="replace")
    assert process.returncode == 2, text
    assert message in " ".join(text.split()), text
    assert "Traceback" not in text
