"""``pacs-vlm demo``: C-STORE in, draft out, on embedded defaults with no servers to install.

Builds a tiny randomly initialised smoke-test model on first run (its text is
noise: it shows the path, not a reading), adds a demo site and a radiologist of
that site (whose password it prints once), starts the listener in this process
and a worker (``pacs-vlm worker``) as a child process, sends the bundled sample
studies and a generated CT series, waits until every study is drafted (or has
failed with a stated reason, e.g. an RT dose object has no image for the
model) and prints each draft, where it is stored, and its DICOM SR (path and a short
``dsrdump`` summary).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from integration.config import Settings
from integration.config_seed import seed_configuration
from integration.demo import DEMO_DIR, DEMO_READER, DEMO_SITE, demo_settings, ensure_demo_reader, send_files
from integration.dicom.listener import Listener
from integration.priors.fetcher import PriorFetcher
from integration.reports.drafts import ensure_draft_sr
from integration.samples import write_ct_series, write_sample_studies
from integration.store.migrate import ensure_schema
from integration.store.reports import StudyOutcome, study_outcomes
from integration.store.session import session_scope
from models.draft import AI_DRAFT_NOTICE
from worker.live_prompts import builtin_prompt_seeds

#: Where the smoke-test model is built once and kept between runs.
SMOKE_MODEL_DIR = Path("var/smoke-model")
SMOKE_FAMILY = "llava"
#: Final study states: nothing more will happen without a new arrival or a reviewer.
FINAL_STATES = frozenset({"drafted", "failed"})
WAIT_SECONDS = 600.0
#: Lines of ``dsrdump`` output shown per draft SR (observer context and language lines are left out).
DSRDUMP_LINES = 18
#: ``dsrdump`` lines that say nothing about the report itself.
DSRDUMP_SKIPPED = ("has obs context", "Language of Content Item")


def smoke_model(console: Console) -> Path:
    """Return the smoke-test model folder, building it on first use (and saying so on ``console``)."""
    folder = SMOKE_MODEL_DIR / SMOKE_FAMILY
    if not (folder / "config.json").is_file():
        from models.smoke import build_smoke_model

        console.print(f"building a randomly initialised {SMOKE_FAMILY} smoke-test model in {folder}/ (first run)")
        shutil.rmtree(folder, ignore_errors=True)
        build_smoke_model(SMOKE_FAMILY, folder)
    return folder


def worker_environment(settings: Settings) -> dict[str, str]:
    """Return the environment of the demo's worker process (the demo's settings as variables)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PACSVLM_")}
    env.update(
        PACSVLM_DATA_DIR=str(settings.data_dir.resolve()),
        PACSVLM_DATABASE_URL=settings.database_url,
        PACSVLM_BROKER_URL=settings.broker_url,
        PACSVLM_STORAGE_DIR=str(settings.instance_root.resolve()),
        PACSVLM_MODEL=str(settings.model.resolve()) if settings.model else "",
        PACSVLM_MODEL_DEVICE=settings.model_device,
        PACSVLM_MAX_NEW_TOKENS=str(settings.max_new_tokens),
        PACSVLM_IMAGE_SIZE=str(settings.image_size),
    )
    return env


def run_demo(*, keep: bool = False) -> int:
    """Run the demo and return the process exit status.

    0 when every study was stored, assembled, queued and then drafted (or failed with a reason).
    ``keep`` keeps ``var/demo`` from an earlier run instead of starting empty.
    """
    console = Console()
    if not keep:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
    model = smoke_model(console)
    base = demo_settings()
    settings = Settings.model_validate(
        {
            **base.model_dump(),
            "model": model,
            "model_device": "cpu",
            "max_new_tokens": 32,
            "max_images": 4,
            "image_size": 256,
        }
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_schema(settings.database_url)
    with session_scope(settings.database_url) as session:  # a fresh install: its configuration is the demo's
        seed_configuration(session, settings, builtin_prompt_seeds())
    password = ensure_demo_reader(settings)  # before any study arrives: the studies belong to its site
    listener = Listener(settings)
    fetcher = PriorFetcher.attach(settings, listener.intake, listener.assembler)  # as `pacs-vlm listen` runs it
    listener.start()
    fetcher.start()
    log_path = settings.data_dir / "worker.log"
    with log_path.open("ab") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--log-level", "warning"],
            env=worker_environment(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    console.print(
        Panel(
            f"listener {settings.ae_title} on 127.0.0.1:{listener.port}; worker pid {worker.pid} (log {log_path})\n"
            f"data in {DEMO_DIR}/ (SQLite, file-system queue); model {model}/\n"
            "[yellow]The model is a randomly initialised smoke test: its text is noise, not a reading.[/yellow]",
            title="pacs-vlm demo",
        )
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    outcomes: list[StudyOutcome] = []
    try:
        with tempfile.TemporaryDirectory() as scratch, Progress(*columns, console=console) as progress:
            folder = Path(scratch)
            files = write_sample_studies(folder / "samples") + write_ct_series(folder / "ct", 60)
            study_uids = sorted({str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files})
            answers = send_files(settings, files, progress)
            waiting = progress.add_task("studies drafted (or failed with a reason)", total=len(study_uids))
            deadline = time.monotonic() + WAIT_SECONDS
            while time.monotonic() < deadline and worker.poll() is None:
                with session_scope(settings.database_url) as session:
                    outcomes = study_outcomes(session, study_uids)
                done = sum(1 for o in outcomes if o.state in FINAL_STATES)
                progress.update(waiting, completed=done)
                if done == len(study_uids):
                    break
                time.sleep(0.5)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        fetcher.stop()
        listener.stop()
    print_outcomes(console, outcomes, settings)
    console.print(f"C-STORE answers: {answers}")
    finished = len(outcomes) == len(study_uids) and all(o.state in FINAL_STATES for o in outcomes)
    drafted = sum(1 for o in outcomes if o.state == "drafted")
    if finished and drafted:
        console.print(
            f"[green]{drafted} of {len(study_uids)} studies drafted; any others failed with the reason shown[/green]"
        )
        sign_in = f"password {password}" if password else "the password shown when the demo first created the user"
        console.print(
            "Review and sign them in the browser (the review page reads the same folder):\n"
            f"  PACSVLM_DATA_DIR={DEMO_DIR} pacs-vlm api --port 8000    # then open http://127.0.0.1:8000/\n"
            f"  sign in as radiologist {DEMO_READER} (site {DEMO_SITE}), {sign_in}"
        )
        return 0
    console.print(f"[red]demo incomplete[/red]: see {log_path}")
    return 1


def print_outcomes(console: Console, outcomes: list[StudyOutcome], settings: Settings) -> None:
    """Print a table of the studies and each draft's text, with where things are stored as a footer."""
    table = Table("study", "state", "report", "prompt", "images seen", "tokens out", "note", title="Analysis")
    for o in outcomes:
        table.add_row(
            f"...{o.study_uid[-20:]}",
            o.state,
            str(o.report_id or "-"),
            o.prompt_version or "-",
            str(o.evidence_count),
            str(o.tokens_out if o.tokens_out is not None else "-"),
            # model output and error text are untrusted: shown as plain text, never as markup
            Text((o.error or ("structured" if o.structured else "free text (flagged)" if o.report_id else ""))[:60]),
        )
    console.print(table)
    for o in outcomes:
        if o.report_text:
            console.print(
                Panel(Text(o.report_text), title=f"draft report {o.report_id} (study ...{o.study_uid[-20:]})")
            )
        if o.report_id is not None:
            print_draft_sr(console, settings, o.report_id)
    console.print(
        f"Drafts are rows of the 'reports' table in {settings.database_url.removeprefix('sqlite:///')}; "
        f"instances are under {settings.instance_root}/."
    )


def print_draft_sr(console: Console, settings: Settings, report_id: int) -> None:
    """Print where a draft's DICOM SR is and a short ``dsrdump`` view of it (header and report content).

    The worker writes the SR right after the draft; :func:`ensure_draft_sr` returns that file (or writes
    it, with the same UIDs, if the worker was stopped in between).
    """
    try:
        path = ensure_draft_sr(settings, report_id)
    except Exception as exc:  # the demo goes on and says why
        console.print(Text(f"draft report {report_id}: no SR ({type(exc).__name__}: {exc})"))
        return
    dsrdump = shutil.which("dsrdump") or ("/usr/bin/dsrdump" if Path("/usr/bin/dsrdump").is_file() else None)
    if dsrdump is None:
        summary = "dsrdump (dcmtk) is not installed: no summary (apt-get install dcmtk)"
    else:
        result = subprocess.run(
            [dsrdump, str(path)], capture_output=True, encoding="utf-8", errors="replace", timeout=60, check=False
        )
        # the draft notice belongs to the report panel above; an SR summary never repeats it
        skipped = (*DSRDUMP_SKIPPED, AI_DRAFT_NOTICE)
        lines = [line for line in result.stdout.splitlines() if not any(s in line for s in skipped)]
        summary = "\n".join(lines[:DSRDUMP_LINES]) or f"dsrdump exited with {result.returncode}: {result.stderr[:200]}"
    # SR content holds model output: plain text, never markup
    console.print(Panel(Text(summary), title=Text(f"draft report {report_id}: SR {path}"), title_align="left"))
