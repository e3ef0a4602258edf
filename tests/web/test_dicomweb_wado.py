"""WADO-RS and rendered on real sockets: ``pacs-vlm api`` on PostgreSQL, read by dicomweb-client, httpx and Orthanc.

One api process and one data set serve the module: a NORTH study of four series in four transfer syntaxes
(explicit and implicit VR little endian, JPEG baseline, RLE with two frames; pydicom's test files with new
UIDs) and our draft's SR (under the data folder), a SOUTH study, and a NORTH 300-slice CT series of 512x512
slices (about 157 MB), all stored as the listener stores them.  Radiologists read with viewer tokens
(Bearer) or HTTP Basic (Orthanc).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.uid import generate_uid
from sqlalchemy import select

from integration.config import Settings
from integration.intake.assembly import StudyAssembler
from integration.samples import pydicom_test_file, write_ct_series
from integration.store.migrate import upgrade
from integration.store.session import session_scope
from integration.store.tables import Report, User, UserRole, utcnow
from integration.store.users import DICOMWEB_SCOPE, create_session, create_site, create_user
from integration.web.dicomweb.negotiation import DICOM, MULTIPART, MediaRange, media_ranges, part_type_of
from tests.conftest import TEST_REDIS_DB
from tests.support.instances import ingest
from tests.support.orthanc import DICOMWEB_PLUGIN, ORTHANC, OrthancServer
from tests.support.review_app import draft, evidence_of, ingest_settings
from tests.support.services import Postgres, RedisServer
from tests.web.conftest import ApiProcess
from tests.web.test_api_memory import MIB, rss

PASSWORD = "correct horse battery staple"
EXPLICIT, IMPLICIT, JPEG, RLE = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
)
SOURCES = {
    "CT_small.dcm": EXPLICIT,
    "MR_small_implicit.dcm": IMPLICIT,
    "SC_rgb_jpeg_dcmtk.dcm": JPEG,
    "SC_rgb_rle_2frame.dcm": RLE,
}
SLICES = 300


@dataclass
class World:
    settings: Settings
    api: ApiProcess
    study: str
    instances: dict[str, pydicom.Dataset]  # by transfer syntax
    south_study: str
    big_study: str
    big_series: str
    big_files: list[Path]
    tokens: dict[str, str]
    sr_uid: str
    sr_file: Path  # our draft SR, under the api's data folder

    def files(self) -> dict[str, bytes]:
        """The study's stored files by SOP Instance UID: the four instances and our SR."""
        found = {str(ds.SOPInstanceUID): self.stored(ds).read_bytes() for ds in self.instances.values()}
        return {**found, self.sr_uid: self.sr_file.read_bytes()}

    def stored(self, ds: pydicom.Dataset) -> Path:
        root = self.settings.instance_root
        return root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"

    def client(self, user: str = "north_rad") -> DICOMwebClient:
        return DICOMwebClient(self.api.url + "/dicomweb", headers={"Authorization": f"Bearer {self.tokens[user]}"})

    def get(self, path: str, user: str | None = "north_rad", **headers: str) -> httpx.Response:
        sent = dict(headers)
        if user:
            sent["Authorization"] = f"Bearer {self.tokens[user]}"
        return httpx.get(self.api.url + "/dicomweb" + path, headers=sent, timeout=60)


def _copy(source: Path, target: Path, **changes: Any) -> Path:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


@pytest.fixture(scope="module")
def world(postgres: Postgres, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = postgres.create_database()
    upgrade(url)
    tmp = tmp_path_factory.mktemp("wado")
    settings = ingest_settings(url, redis_server.url(TEST_REDIS_DB), tmp)
    with session_scope(url) as session:
        sites = {code: create_site(session, code, code.title()).id for code in ("NORTH", "SOUTH")}
        for name, role, site in (
            ("north_rad", UserRole.RADIOLOGIST, "NORTH"),
            ("south_rad", UserRole.RADIOLOGIST, "SOUTH"),
            ("boss", UserRole.ADMIN, None),
        ):
            create_user(session, name, PASSWORD, role, site)
    with session_scope(url) as session:
        tokens = {
            user.username: create_session(session, user, timedelta(hours=2), scope=DICOMWEB_SCOPE)
            for user in session.scalars(select(User))
        }
    earlier = utcnow() - timedelta(seconds=60)
    study = generate_uid()
    patient = {"PatientID": "WADO-1", "PatientName": "Wado^Test", "StudyInstanceUID": study}
    instances = {}
    for name, syntax in SOURCES.items():
        path = _copy(pydicom_test_file(name), tmp / "north" / name, SeriesInstanceUID=generate_uid(), **patient)
        instances[syntax] = ingest(settings, path, earlier, site_id=sites["NORTH"])
    south = _copy(pydicom_test_file("CT_small.dcm"), tmp / "south.dcm", StudyInstanceUID=generate_uid())
    south_study = str(ingest(settings, south, earlier, site_id=sites["SOUTH"]).StudyInstanceUID)
    big_files = write_ct_series(tmp / "big", SLICES)
    for path in big_files:
        header = ingest(settings, path, earlier, site_id=sites["NORTH"])
    StudyAssembler(settings).run_once()
    report_id = draft(
        settings, study, [{"text": "No acute finding.", "images": [1]}], [evidence_of(instances[EXPLICIT], 1)]
    )
    api = ApiProcess(
        tmp / "api",
        {
            "PACSVLM_MIN_FREE_BYTES": "0",
            "PACSVLM_DATABASE_URL": url,
            "PACSVLM_BROKER_URL": settings.broker_url,
            "PACSVLM_STORAGE_DIR": str(settings.instance_root),
        },
    )
    # dicomweb-client sends a Host header without the port: bulk data URIs come from the configured address
    api.env["PACSVLM_PUBLIC_URL"] = api.url
    # our draft's SR, as the worker writes it under the data folder (the catalog serves it with the study)
    sr = pydicom.dcmread(pydicom_test_file("reportsi.dcm"))
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.PatientID = study, generate_uid(), "WADO-1"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    relative = f"reports/{study}/{sr.SOPInstanceUID}.dcm"
    (api.data_dir / relative).parent.mkdir(parents=True)
    sr.save_as(api.data_dir / relative)
    with session_scope(url) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.sr_series_uid, report.sr_sop_instance_uid, report.sr_path = (
            sr.SeriesInstanceUID,
            sr.SOPInstanceUID,
            relative,
        )
    api.start()
    yield World(
        settings,
        api,
        study,
        instances,
        south_study,
        str(header.StudyInstanceUID),
        str(header.SeriesInstanceUID),
        big_files,
        tokens,
        str(sr.SOPInstanceUID),
        api.data_dir / relative,
    )
    api.stop()


def multipart_parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related answer (a plain split on the boundary, independent of the server's code)."""
    content_type = response.headers["content-type"]
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary"))
    pieces = (b"\r\n" + response.content).split(b"\r\n--" + boundary.encode())
    assert pieces[-1].startswith(b"--"), "no closing delimiter"
    parts = []
    for piece in pieces[1:-1]:
        head, _, content = piece[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append(({k.lower(): v for k, v in headers.items()}, content))
    return parts


def series_path(ds: pydicom.Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def instance_path(ds: pydicom.Dataset) -> str:
    return f"{series_path(ds)}/instances/{ds.SOPInstanceUID}"


def test_dicomweb_client_retrieves_study_series_and_instance_as_stored(world: World) -> None:
    client = world.client()
    study = client.retrieve_study(world.study)
    assert sorted(str(ds.SOPInstanceUID) for ds in study) == sorted(world.files())
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in study} == set(SOURCES.values())
    ct = world.instances[EXPLICIT]
    (series,) = client.retrieve_series(world.study, str(ct.SeriesInstanceUID))
    assert (
        series.SOPInstanceUID == ct.SOPInstanceUID and series.PixelData == pydicom.dcmread(world.stored(ct)).PixelData
    )
    jpeg = world.instances[JPEG]
    instance = client.retrieve_instance(world.study, str(jpeg.SeriesInstanceUID), str(jpeg.SOPInstanceUID))
    assert instance.file_meta.TransferSyntaxUID == JPEG

    # bytes equal to the stored files, part by part, in catalog order
    answer = world.get(f"/studies/{world.study}", Accept='multipart/related; type="application/dicom"')
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("multipart/related")
    parts = multipart_parts(answer)
    stored = {world.stored(ds).read_bytes(): syntax for syntax, ds in world.instances.items()}
    stored[world.sr_file.read_bytes()] = EXPLICIT
    assert len(parts) == 5 and all(content in stored for _, content in parts)
    assert parts[-1][1] == world.sr_file.read_bytes()  # received instances first, then ours
    for headers, content in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={stored[content]}"


def test_single_application_dicom_transcoding_and_406(world: World) -> None:
    ct, jpeg, implicit = world.instances[EXPLICIT], world.instances[JPEG], world.instances[IMPLICIT]
    single = world.get(instance_path(ct), Accept="application/dicom")
    assert single.status_code == 200 and single.content == world.stored(ct).read_bytes()
    assert single.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    star = world.get(series_path(jpeg), Accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert multipart_parts(star)[0][1] == world.stored(jpeg).read_bytes()

    # Explicit VR Little Endian asked for: the JPEG and the implicit VR instances are converted
    asked = f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT}"
    converted = world.client().retrieve_study(world.study, media_types=(("application/dicom", EXPLICIT),))
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in converted} == {EXPLICIT}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in converted}
    original = pydicom.dcmread(world.stored(jpeg))
    assert np.array_equal(by_uid[str(jpeg.SOPInstanceUID)].pixel_array, original.pixel_array)
    assert np.array_equal(
        by_uid[str(implicit.SOPInstanceUID)].pixel_array, pydicom.dcmread(world.stored(implicit)).pixel_array
    )
    assert world.get(instance_path(jpeg), Accept=asked).status_code == 200

    # another syntax, or another media type: 406 with a message
    refused = world.get(
        f"/studies/{world.study}", Accept=f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}'
    )
    assert (
        refused.status_code == 406 and "Explicit" not in refused.text and "transfer-syntax" in refused.json()["detail"]
    )
    assert world.get(f"/studies/{world.study}", Accept="application/dicom").status_code == 406  # multipart only
    assert world.get(instance_path(ct), Accept="text/html").status_code == 406
    # alternatives: the first that can be met wins (q order)
    both = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}, '
    both += 'multipart/related; type="application/dicom"; q=0.5'
    assert world.get(f"/studies/{world.study}", Accept=both).status_code == 200


def test_metadata_with_bulk_data_uris_and_bulk_data(world: World) -> None:
    client = world.client()
    metadata = client.retrieve_study_metadata(world.study)
    assert len(metadata) == 5
    for item in metadata:
        assert item["0020000D"]["Value"] == [world.study]
        pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    images, (sr,) = metadata[:4], metadata[4:]
    assert all(list(item["7FE00010"]) == ["vr", "BulkDataURI"] for item in images)
    assert sr["00080018"]["Value"] == [world.sr_uid] and "0040A730" in sr and "7FE00010" not in sr
    ct = world.instances[EXPLICIT]
    one = client.retrieve_instance_metadata(world.study, str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID))
    assert one["00100010"]["Value"] == [{"Alphabetic": "Wado^Test"}]
    assert one["7FE00010"]["vr"] == "OW"
    (pixels,) = client.retrieve_bulkdata(one["7FE00010"]["BulkDataURI"])
    assert pixels == pydicom.dcmread(world.stored(ct)).PixelData
    series = client.retrieve_series_metadata(world.study, str(ct.SeriesInstanceUID))
    assert [item["00080018"]["Value"][0] for item in series] == [str(ct.SOPInstanceUID)]
    assert world.get(f"/studies/{world.study}/metadata", Accept="application/dicom+xml").status_code == 406


def test_frames_uncompressed_from_the_file_decoded_or_as_stored(world: World) -> None:
    client = world.client()
    for syntax in (EXPLICIT, IMPLICIT):
        ds = world.instances[syntax]
        (frame,) = client.retrieve_instance_frames(
            world.study,
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            [1],
            media_types=("application/octet-stream",),
        )
        assert frame == pydicom.dcmread(world.stored(ds)).PixelData
    rle = world.instances[RLE]
    uids = (world.study, str(rle.SeriesInstanceUID), str(rle.SOPInstanceUID))
    frames = client.retrieve_instance_frames(*uids, [2, 1], media_types=("application/octet-stream",))
    decoded = pydicom.dcmread(world.stored(rle)).pixel_array
    assert frames == [decoded[1].tobytes(), decoded[0].tobytes()]
    # the client accepts the stored compression: the encapsulated frames go out as they are
    stored = pydicom.dcmread(world.stored(rle))
    as_stored = client.retrieve_instance_frames(*uids, [1, 2], media_types=(("image/dicom-rle", RLE),))
    assert as_stored == [get_frame(stored.PixelData, i, number_of_frames=2) for i in (0, 1)]
    answer = world.get(
        f"{instance_path(rle)}/frames/1", Accept="multipart/related; type=application/octet-stream; transfer-syntax=*"
    )
    assert multipart_parts(answer)[0][0]["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"
    assert world.get(f"{instance_path(rle)}/frames/3", Accept="*/*").status_code == 404
    assert world.get(f"{instance_path(rle)}/frames/0").status_code == 400
    assert world.get(f"{instance_path(rle)}/frames/1", Accept='multipart/related; type="image/jp2"').status_code == 406


def test_rendered_jpeg_and_png_with_window_viewport_and_quality(world: World) -> None:
    client = world.client()
    ct = world.instances[EXPLICIT]
    uids = (world.study, str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID))
    jpeg = client.retrieve_instance_rendered(*uids, media_types=("image/jpeg",))
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (128, 128) and image.mode == "L"
    png = world.get(f"{instance_path(ct)}/rendered?viewport=64,32", Accept="image/png")
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (32, 32)
    narrow = np.asarray(
        Image.open(io.BytesIO(world.get(f"{instance_path(ct)}/rendered?window=40,80", Accept="image/png").content))
    )
    wide = np.asarray(
        Image.open(
            io.BytesIO(world.get(f"{instance_path(ct)}/rendered?window=40,4000,sigmoid", Accept="image/png").content)
        )
    )
    assert narrow.std() > wide.std()  # a narrow window spreads the tissue over more grey levels
    small = client.retrieve_instance_rendered(*uids, media_types=("image/jpeg",), params={"quality": "5"})
    assert len(small) < len(jpeg)
    rle = world.instances[RLE]
    frame = client.retrieve_instance_frames_rendered(
        world.study, str(rle.SeriesInstanceUID), str(rle.SOPInstanceUID), [2], media_types=("image/jpeg",)
    )
    assert Image.open(io.BytesIO(frame)).mode == "RGB"
    assert world.get(f"{instance_path(ct)}/rendered?window=40", Accept="image/jpeg").status_code == 400
    assert world.get(f"{instance_path(ct)}/rendered?viewport=0,10").status_code == 400
    assert world.get(f"{instance_path(ct)}/rendered", Accept="image/gif").status_code == 406
    assert world.get(f"{instance_path(rle)}/frames/3/rendered").status_code == 404


def test_another_sites_study_is_not_found_and_credentials_are_required(world: World) -> None:
    ct = world.instances[EXPLICIT]
    for path in (
        f"/studies/{world.study}",
        f"/studies/{world.study}/metadata",
        f"{instance_path(ct)}/frames/1",
        f"{instance_path(ct)}/rendered",
        f"{instance_path(ct)}/bulkdata/7FE00010",
    ):
        assert world.get(path, user="south_rad").status_code == 404, path
        assert world.get(path, user=None).status_code == 401, path
    assert world.get(f"/studies/{world.south_study}").status_code == 404
    assert world.get(f"/studies/{world.south_study}", user="south_rad").status_code == 200
    assert world.get(f"/studies/{world.south_study}", user="boss").status_code == 200
    assert world.get(f"/studies/{world.study}/series/{generate_uid()}").status_code == 404
    assert world.get("/studies/1.2.3..4").status_code == 422
    basic = httpx.get(
        world.api.url + f"/dicomweb/studies/{world.study}/metadata", auth=("north_rad", PASSWORD), timeout=30
    )
    assert basic.status_code == 200 and len(basic.json()) == 5


def test_a_300_slice_series_streams_in_bounded_memory(world: World) -> None:
    size = sum(path.stat().st_size for path in world.big_files)
    headers = {
        "Authorization": f"Bearer {world.tokens['north_rad']}",
        "Accept": "multipart/related; type=application/dicom",
    }
    url = f"{world.api.url}/dicomweb/studies/{world.big_study}/series/{world.big_series}"
    httpx.get(url + "/metadata", headers={"Authorization": headers["Authorization"]}, timeout=60)  # warm the route
    before, _ = rss(world.api, reset_peak=True)
    received = 0
    started = time.monotonic()
    with httpx.stream("GET", url, headers=headers, timeout=120) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_raw(256 * 1024):
            received += len(chunk)
            time.sleep(0.001)  # a reader slower than the disk: the server must wait, not buffer
    elapsed = time.monotonic() - started
    after, peak = rss(world.api)
    print(
        f"\n300-slice series: {size / MIB:.0f} MiB of files, {received / MIB:.0f} MiB sent in {elapsed:.1f} s, "
        f"rss {before / MIB:.0f} -> {after / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB"
    )
    assert size > 150 * MIB and size < received < size + SLICES * 200
    assert peak - before < 40 * MIB  # the series is 157 MB; streamed a megabyte at a time


@pytest.mark.skipif(not (Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()), reason="Orthanc not installed")
def test_orthanc_retrieves_a_study_from_us_with_its_dicomweb_client(world: World) -> None:
    server = [f"{world.api.url}/dicomweb/", "north_rad", PASSWORD]
    dicomweb = {"Enable": True, "Root": "/dicom-web/", "Servers": {"pacsvlm": server}}
    with OrthancServer(plugins=[DICOMWEB_PLUGIN], extra_config={"DicomWeb": dicomweb}) as orthanc:
        # query (QIDO-RS), read the metadata through Orthanc's /get, then retrieve (WADO-RS)
        found = orthanc.post_json(
            "/dicom-web/servers/pacsvlm/qido", {"Uri": "/studies", "Arguments": {"StudyInstanceUID": world.study}}
        )
        assert [item["0020000D"]["Value"] for item in found] == [world.study]  # Orthanc simplifies the JSON
        metadata = orthanc.post_json("/dicom-web/servers/pacsvlm/get", {"Uri": f"/studies/{world.study}/metadata"})
        assert len(metadata) == 5 and all("BulkDataURI" in item["7FE00010"] for item in metadata[:4])
        orthanc.post_json("/dicom-web/servers/pacsvlm/retrieve", {"Resources": [{"Study": world.study}]})
        (study,) = orthanc.studies()
        held = orthanc.study_instances(study)
        files = world.files()
        assert sorted(item["MainDicomTags"]["SOPInstanceUID"] for item in held) == sorted(files)
        for item in held:  # the very bytes we hold
            data = orthanc.request("GET", f"/instances/{item['ID']}/file")
            assert data == files[item["MainDicomTags"]["SOPInstanceUID"]]


def test_accept_headers_as_clients_write_them() -> None:
    orthanc = media_ranges('multipart/related; type="application/dicom"; transfer-syntax=*')
    assert [(r.essence, r.part_type, r.transfer_syntax) for r in orthanc] == [(MULTIPART, DICOM, None)]
    client = media_ranges(f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}')
    assert client[0].transfer_syntax == EXPLICIT
    weighted = media_ranges('image/png;q=0.5, multipart/related; type="a/b,c"; q=0.9, image/gif;q=0, image/jpeg')
    assert [r.essence for r in weighted] == ["image/jpeg", MULTIPART, "image/png"]  # q order; a quoted comma
    assert weighted[1].part_type == "a/b,c" and media_ranges(None) == media_ranges("  ") == [MediaRange("*/*")]
    assert part_type_of(media_ranges("multipart/related")[0]) == "*/*" and part_type_of(weighted[0]) is None
