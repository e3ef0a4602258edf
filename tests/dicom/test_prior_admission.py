"""C-MOVE arrivals from a prior source: admitted from its host without being a calling AE, stored only as priors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from integration.config import Settings
from integration.dicom import status
from integration.dicom import upper_layer as ul
from integration.dicom.peer import Peer
from integration.dicom.storage_scp import StorageSCP
from integration.intake.intake import InstanceIntake
from integration.intake.storage import InstanceStore
from integration.samples import pydicom_test_file
from integration.store.priors import reserve_prior_study
from integration.store.session import session_scope
from integration.store.tables import utcnow
from tests.support.peers import ListenerProcess
from tests.support.records import db_rows

#: One C-MOVE source on this host, one on a host we are not connecting from, one retrieving by C-GET.
PRIOR_SOURCES = [
    {"name": "pacs", "kind": "dimse", "ae_title": "MOVEPACS", "host": "127.0.0.1", "port": 11112, "retrieve": "move"},
    {"name": "far", "kind": "dimse", "ae_title": "FARPACS", "host": "127.0.0.2", "port": 11112, "retrieve": "move"},
    {"name": "getter", "kind": "dimse", "ae_title": "GETPACS", "host": "127.0.0.1", "port": 11112},
]


def request(calling_ae: str) -> ul.RequestHeader:
    return ul.RequestHeader(protocol_version=1, called_ae="PACSVLM", calling_ae=calling_ae)


def test_admission_and_origin_of_a_move_source(tmp_path: Path) -> None:
    settings = Settings(
        ae_title="PACSVLM",
        data_dir=tmp_path,
        calling_aes={"CT1": {}, "BOTH": {}},
        prior_sources=[*PRIOR_SOURCES, {**PRIOR_SOURCES[0], "name": "both", "ae_title": "BOTH"}],
    )
    intake = InstanceIntake(settings, InstanceStore(settings.instance_root, min_free_bytes=0))
    try:
        scp = StorageSCP(settings, intake)
        here = Peer("MOVEPACS", "127.0.0.1", 4000)
        assert scp.admit(request("MOVEPACS"), here) is None
        assert scp.admit(request("FARPACS"), here).reason.startswith("connected from a host not allowed")  # type: ignore[union-attr]
        assert scp.admit(request("GETPACS"), here).reason == "calling AE not in the allowlist"  # type: ignore[union-attr]
        assert scp.admit(request("INTRUDER"), here).reason == "calling AE not in the allowlist"  # type: ignore[union-attr]
        prior = scp.origin_for("MOVEPACS")
        assert (prior.role, prior.any_site, prior.site_id) == ("prior", True, None)
        assert scp.origin_for("BOTH").role == "current"  # a calling AE keeps its ordinary origin
        assert scp.origin_for("CT1").role == "current"
    finally:
        intake.close()


def test_a_move_source_stores_only_into_a_reserved_prior(
    listener_factory: Callable[..., ListenerProcess], migrated_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    listener = listener_factory(
        migrated_postgres_url, redis_url, extra_env={"PACSVLM_PRIOR_SOURCES": json.dumps(PRIOR_SOURCES)}
    )
    reserved = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    unrequested = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    unrequested.StudyInstanceUID, unrequested.SeriesInstanceUID = generate_uid(), generate_uid()
    unrequested.SOPInstanceUID = generate_uid()
    with session_scope(migrated_postgres_url) as session:
        prior_id, _ = reserve_prior_study(session, str(reserved.StudyInstanceUID), None, "MOVEPACS", utcnow())

    ae = AE(ae_title="MOVEPACS")
    ae.add_requested_context(reserved.SOPClassUID, [str(reserved.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert association.is_established
    try:
        assert association.send_c_store(reserved).Status == status.SUCCESS
        assert association.send_c_store(unrequested).Status == status.NOT_AUTHORIZED
    finally:
        association.release()
    assert db_rows(migrated_postgres_url, "SELECT id, role, study_uid FROM studies") == [
        (prior_id, "prior", str(reserved.StudyInstanceUID))
    ]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM instances") == [(1,)]
    assert db_rows(migrated_postgres_url, "SELECT count(*) FROM prior_searches") == [(0,)]

    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(reserved.SOPClassUID, ExplicitVRLittleEndian)
    refused = intruder.associate("127.0.0.1", listener.port, ae_title="PACSVLM")
    assert refused.is_rejected
