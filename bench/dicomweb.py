"""DICOMweb read speed: WADO-RS of a 300-slice series and QIDO-RS latency, ours against Orthanc's DICOMweb plugin.

One generated axial CT series (default 300 slices of 512x512 16-bit pixels, about 157 MB;
:func:`integration.samples.ct_series`) is stored in both servers in the same run: in ours through the real
intake (:class:`~integration.intake.intake.InstanceIntake`, in process, into a fresh PostgreSQL database)
and served by a ``pacs-vlm api`` process; in Orthanc (Debian's, with its DICOMweb plugin) over its REST
API.  The same httpx client then, alternating between the servers:

- retrieves the whole series ``--rounds`` times (``GET /studies/{study}/series/{series}``, ``Accept:
  multipart/related; type="application/dicom"``, the body read to its end) -- the median is reported;
- sends ``--queries`` QIDO-RS queries, alternately a study query by UID (``/studies?StudyInstanceUID=``)
  and the study's series (``/studies/{study}/series``) -- the 99th percentile is reported.

Ours is read with a viewer token (``Authorization: Bearer``: one indexed lookup per request, as a viewer
reads), Orthanc without authentication.  The table shows both servers and the ratio; the last line is
``wado series_<n>_s=<our median> qido_p99_ms=<our p99>``.  Goal (issue 18): within 1.5x of Orthanc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
from rich.table import Table

from bench.load import Deployment
from bench.prior_data import PriorPacs
from bench.processes import BROKER_URL, REPO, BenchError, ManagedProcess, console, free_port, port_open, wait_until
from integration.config import Settings
from integration.intake.intake import InstanceIntake
from integration.intake.outcome import Origin
from integration.intake.storage import InstanceStore
from integration.samples import write_ct_series
from integration.store.session import session_scope
from integration.store.tables import UserRole
from integration.store.users import DICOMWEB_SCOPE, create_session, create_site, create_user

ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
GOAL_RATIO = 1.5
READ_BYTES = 1024 * 1024


def _store_ours(settings: Settings, files: list[Path]) -> str:
    """Store the series through the intake for a new site; return a radiologist's viewer token."""
    with session_scope(settings.database_url) as session:
        site = create_site(session, "BENCH", "Bench")
        user = create_user(session, "bench_rad", "bench password 1234", UserRole.RADIOLOGIST, "BENCH")
        token = create_session(session, user, timedelta(hours=4), scope=DICOMWEB_SCOPE)
        site_id = site.id
    intake = InstanceIntake(settings, InstanceStore(settings.instance_root, fsync=False, min_free_bytes=0))
    origin = Origin("BENCH", "dicom", site_id, 3600.0)
    try:
        for path in files:
            outcome = intake.store_part10(path.read_bytes(), origin)
            if not outcome.succeeded:
                raise BenchError(f"the intake refused an instance: {outcome.reason}")
    finally:
        intake.close()
    return token


def _retrieve(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, int]:
    """Time one retrieval read to its end; return seconds and bytes."""
    started = time.perf_counter()
    received = 0
    with client.stream("GET", url, headers={**headers, "Accept": ACCEPT_DICOM}) as answer:
        if answer.status_code != 200:
            raise BenchError(f"GET {url}: HTTP {answer.status_code} {answer.read()[:300]!r}")
        for chunk in answer.iter_raw(READ_BYTES):
            received += len(chunk)
    return time.perf_counter() - started, received


def _query(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    """Time one QIDO-RS query; return milliseconds."""
    started = time.perf_counter()
    answer = client.get(url, headers={**headers, "Accept": "application/dicom+json"})
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200 or not answer.json():
        raise BenchError(f"GET {url}: HTTP {answer.status_code} {answer.text[:300]}")
    return elapsed


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def _measure(
    servers: dict[str, tuple[str, dict[str, str]]], study: str, series: str, rounds: int, queries: int
) -> dict[str, dict[str, list[float]]]:
    """Alternate retrievals and queries between the servers; return the timings by server and kind."""
    found: dict[str, dict[str, list[float]]] = {name: {"wado": [], "bytes": [], "qido": []} for name in servers}
    with httpx.Client(timeout=300) as client:
        for base, headers in servers.values():  # warm up: connections, caches, lazy imports
            _retrieve(client, f"{base}/studies/{study}/series/{series}", headers)
            _query(client, f"{base}/studies?StudyInstanceUID={study}", headers)
        for _ in range(rounds):
            for name, (base, headers) in servers.items():
                seconds, received = _retrieve(client, f"{base}/studies/{study}/series/{series}", headers)
                found[name]["wado"].append(seconds)
                found[name]["bytes"].append(float(received))
        paths = [f"/studies?StudyInstanceUID={study}", f"/studies/{study}/series"]
        for index in range(queries):
            for name, (base, headers) in servers.items():
                found[name]["qido"].append(_query(client, base + paths[index % 2], headers))
    return found


def _table(found: dict[str, dict[str, list[float]]], slices: int, size_mb: float, rounds: int, queries: int) -> Table:
    ours, orthanc = found["ours"], found["orthanc"]
    table = Table(
        title=f"DICOMweb reads: {slices}-slice series ({size_mb:.0f} MB), {rounds} retrievals, {queries} queries"
    )
    for column in ("measure", "ours", "orthanc", "ours / orthanc", "goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows: list[tuple[str, Callable[[dict[str, list[float]]], float], str]] = [
        ("WADO-RS series, median s", lambda f: statistics.median(f["wado"]), "{:.3f}"),
        ("WADO-RS series, best s", lambda f: min(f["wado"]), "{:.3f}"),
        (
            "WADO-RS MB/s (median)",
            lambda f: statistics.median(f["bytes"]) / 1e6 / statistics.median(f["wado"]),
            "{:.0f}",
        ),
        ("QIDO-RS p50 ms", lambda f: statistics.median(f["qido"]), "{:.1f}"),
        ("QIDO-RS p99 ms", lambda f: _p99(f["qido"]), "{:.1f}"),
    ]
    for label, value, shape in rows:
        mine, theirs = value(ours), value(orthanc)
        faster_is_higher = label.startswith("WADO-RS MB/s")
        ratio = theirs / mine if faster_is_higher else mine / theirs
        goal = "" if "best" in label or "p50" in label else ("met" if ratio <= GOAL_RATIO else "missed")
        table.add_row(label, shape.format(mine), shape.format(theirs), f"{ratio:.2f}x", goal)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the summary line.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when it ran (whatever the ratios), 1 when it could not.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.dicomweb",
        description="WADO-RS series retrieval and QIDO-RS latency, ours vs Orthanc's DICOMweb plugin; "
        "prints a table and, last, 'wado series_<n>_s=<median> qido_p99_ms=<p99>'.",
    )
    parser.add_argument("--slices", type=int, default=300, help="slices in the series (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each slice (default 512)")
    parser.add_argument("--rounds", type=int, default=7, help="series retrievals per server (default 7)")
    parser.add_argument("--queries", type=int, default=200, help="QIDO-RS queries per server (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 slices of 128x128, 3 rounds, 40 queries")
    parser.add_argument("--broker-url", default=BROKER_URL, help="Redis database for the api (flushed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.size, args.rounds, args.queries = 20, 128, 3, 40
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-bench-dicomweb-") as tmp,
        Deployment(Path(tmp), args.broker_url) as deploy,
    ):
        folder = Path(tmp)
        files = write_ct_series(folder / "series", args.slices, rows=args.size, columns=args.size)
        size_mb = sum(path.stat().st_size for path in files) / 1e6
        import pydicom

        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        study, series = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
        settings = Settings(data_dir=deploy.data_dir, database_url=deploy.database_url, min_free_bytes=0)
        token = _store_ours(settings, files)
        orthanc = PriorPacs(folder / "orthanc").start()
        try:
            orthanc.upload([path.read_bytes() for path in files], lambda: None)
            port = free_port()
            api = ManagedProcess(
                "pacs-vlm api",
                [sys.executable, "-m", "worker.cli", "api", "--port", str(port)],
                deploy.env({}),
                folder / "api.log",
                cwd=REPO,
            )
            api.start()
            deploy.processes.append(api)
            wait_until(lambda: port_open(port), "open HTTP port", api)
            servers = {
                "ours": (f"http://127.0.0.1:{port}/dicomweb", {"Authorization": f"Bearer {token}"}),
                "orthanc": (f"{orthanc.url}/dicom-web", {}),
            }
            found = _measure(servers, study, series, args.rounds, args.queries)
        except BenchError as exc:
            console.print(f"[red]bench.dicomweb failed:[/red] {exc}", markup=True, highlight=False)
            return 1
        finally:
            orthanc.stop()
    console.print(_table(found, args.slices, size_mb, args.rounds, args.queries))
    median = statistics.median(found["ours"]["wado"])
    print(f"wado series_{args.slices}_s={median:.3f} qido_p99_ms={_p99(found['ours']['qido']):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
