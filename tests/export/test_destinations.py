"""Destination settings: what each kind needs and takes, and which report versions go where."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from integration.config import Settings
from integration.destinations import Destination
from tests.support.peers import REPO


def test_defaults_per_kind_and_report_rules() -> None:
    pacs = Destination(name="pacs", kind="dicom", ae_title="ORTHANC", host="10.0.0.10", port=4242)
    assert pacs.documents == ("sr", "tid1500", "kos") and pacs.takes("signed") and not pacs.takes("draft")
    assert pacs.documents_for("draft") == ("sr", "tid1500", "kos")
    assert pacs.documents_for("signed") == ("sr", "tid1500")  # a signed version has no key images document
    vna = Destination(name="vna", kind="dicomweb", url="https://vna.example.org/dicom-web", documents=["sr"])
    assert vna.documents == ("sr",) and vna.documents_for("signed") == ("sr",)
    files = Destination(name="files", kind="folder", folder="/exports", documents=["sr", "tid1500", "kos"])
    assert files.documents_for("draft") == ("sr", "tid1500", "kos")
    drop = Destination(name="drop", kind="folder", folder="/exports", reports="both")
    assert drop.documents == ("fhir", "hl7") and drop.takes("draft") and drop.takes("signed")
    ris = Destination(name="ris", kind="http", url="https://ris.example.org/hl7", documents=["hl7"], reports="drafts")
    assert ris.takes("draft") and not ris.takes("signed")
    mllp = Destination(name="ris", kind="mllp", host="ris", port=2575, tls=True, ca_file="/ca.pem")
    assert mllp.documents == ("hl7",) and mllp.uses_tls and mllp.sites == () and mllp.modalities == ()
    fhir = Destination(name="ehr", kind="fhir", url="https://ehr/fhir", certificate="/c.pem", private_key="/c.key")
    assert fhir.documents == ("fhir",) and fhir.uses_tls and fhir.auth is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "dicom", "host": "h", "port": 104}, "needs ae_title, host and port"),
        ({"kind": "dicom", "ae_title": "A\\B", "host": "h", "port": 104}, "ae_title must be"),
        ({"kind": "dicomweb", "url": "ftp://x"}, "needs an http(s) url"),
        ({"kind": "dicom", "ae_title": "A", "host": "h", "port": 104, "documents": ["fhir"]}, "cannot take fhir"),
        ({"kind": "http", "url": "https://x", "documents": ["sr"]}, "cannot take sr"),
        ({"kind": "http", "url": "https://x", "documents": ["tid1500", "kos"]}, "cannot take kos, tid1500"),
        ({"kind": "fhir", "url": "https://x", "documents": ["kos"]}, "cannot take kos"),
        ({"kind": "folder"}, "needs folder"),
        ({"kind": "smtp"}, "Input should be"),
        ({"kind": "mllp", "host": "ris"}, "an mllp destination needs host and port"),
        ({"kind": "mllp", "host": "ris", "port": 2575, "documents": ["fhir"]}, "cannot take fhir"),
        ({"kind": "mllp", "host": "ris", "port": 2575, "ca_file": "/ca.pem"}, "with tls true"),
        ({"kind": "mllp", "host": "ris", "port": 2575, "receiving_facility": "A^B"}, "should match pattern"),
        ({"kind": "fhir", "url": "ftp://x"}, "needs an http(s) url"),
        ({"kind": "fhir", "url": "https://x", "documents": ["hl7"]}, "cannot take hl7"),
        ({"kind": "fhir", "url": "https://x", "tls": True}, "tls is for dicom and mllp"),
    ],
)
def test_incomplete_destinations_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Destination(name="x", **fields)


def test_destination_names_are_unique_and_checked_at_start_up() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Settings(destinations=[{"name": "a", "kind": "folder", "folder": "/x"}] * 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSVLM_")}
    env["PACSVLM_DESTINATIONS"] = json.dumps([{"name": "pacs", "kind": "dicom", "host": "h"}])
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "deliveries", "list"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "PACSVLM_DESTINATIONS" in result.stderr
    assert "Traceback" not in result.stderr
