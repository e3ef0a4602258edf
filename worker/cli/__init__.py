"""The ``pacs-vlm`` command line: every process of the design in one tool."""

from __future__ import annotations

import typer

from integration.cli.alerts import alerts_app
from integration.cli.api import api
from integration.cli.audit import audit_app
from integration.cli.config import config_app
from integration.cli.database import db_app
from integration.cli.deliveries import deliveries_app
from integration.cli.jobs import jobs_app
from integration.cli.listen import listen
from integration.cli.orders import orders_app
from integration.cli.purge import purge_command
from integration.cli.reports import report_app
from integration.cli.store import store_app
from integration.cli.studies import studies_app
from integration.cli.users import sites_app, users_app
from worker.cli.config_seed import config_seed
from worker.cli.evaluation import eval_app
from worker.cli.models import models_app
from worker.cli.processes import demo, worker

app = typer.Typer(
    help="pacs-vlm: a medical vision-language model beside your PACS (draft reports for radiologist review).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("listen")(listen)
app.command("api")(api)
app.add_typer(db_app, name="db")
app.add_typer(studies_app, name="studies")
app.add_typer(jobs_app, name="jobs")
app.add_typer(report_app, name="report")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(alerts_app, name="alerts")
app.add_typer(orders_app, name="orders")
app.add_typer(sites_app, name="sites")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
config_app.command("seed")(config_seed)  # the built-in prompts are the worker side's
app.add_typer(config_app, name="config")
app.add_typer(store_app, name="store")
app.command("purge")(purge_command)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")


app.command("worker")(worker)
app.command("demo")(demo)


if __name__ == "__main__":
    app()
