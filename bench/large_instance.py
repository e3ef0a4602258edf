"""A 2 GiB-class instance into the listener: it must cost the listener no more than a buffer.

A multi-frame instance (Multi-frame Grayscale Word Secondary Capture, 1024 x 1024 16-bit frames; 1024 frames
make 2 GiB of pixel data) is written to disk frame by frame, never held in memory, and sent by dcmtk's
``storescu`` (``/usr/bin/storescu``; the venv's ``storescu`` is pynetdicom's) to ``pacs-vlm listen`` in its
production configuration (PostgreSQL, Redis, fsync on).  The listener's peak RSS (``VmHWM``, reset just
before the send) is compared with its RSS before: an association holds at most about one MiB plus one PDU
of a data set, the rest goes to the instance file as it arrives (:mod:`integration.intake.spool`).  The
stored file is checked against the sent one (the data set byte for byte, by digest).

The last line printed is::

    large_instance mib=<pixel data MiB> seconds=<send time> rss_growth_mib=<peak RSS growth>

and the exit status is 0 when the instance was stored and the growth stayed under 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.hostile import peak_rss_mib, reset_peak_rss
from bench.ingest import console
from bench.load import CALLING_AE, DEFAULT_BROKER_URL, Deployment

STORESCU = "/usr/bin/storescu"
#: Multi-frame Grayscale Word Secondary Capture Image Storage.
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
FRAME_SIDE = 1024
FRAME_BYTES = FRAME_SIDE * FRAME_SIDE * 2
#: The listener's allowed growth of its peak RSS while it receives the instance.
RSS_LIMIT_MIB = 64.0


def write_multiframe(path: Path, frames: int) -> tuple[str, str]:
    """Write a multi-frame instance of ``frames`` 1024 x 1024 16-bit frames, one frame in memory at a time.

    Parameters
    ----------
    path : pathlib.Path
        The Part 10 file to write (explicit VR little endian).
    frames : int
        Number of frames (2 MiB each).

    Returns
    -------
    tuple of (str, str)
        Its SOP Instance UID and Study Instance UID.
    """
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "LARGE^INSTANCE", "LARGE1", "OT"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.Rows = ds.Columns = FRAME_SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    with path.open("wb") as out:
        ds.save_as(out, enforce_file_format=True)
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * FRAME_BYTES).to_bytes(4, "little"))
        ramp = np.arange(FRAME_SIDE * FRAME_SIDE, dtype=np.uint16) % 4096
        for frame in range(frames):
            out.write(((ramp + frame) % 4096).astype("<u2").tobytes())
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def dataset_digest(path: Path) -> str:
    """SHA-256 of a Part 10 file's data set (what follows its file meta group), read in chunks."""
    with path.open("rb") as source:
        head = source.read(144)
        source.seek(144 + int.from_bytes(head[140:144], "little"))
        digest = hashlib.sha256()
        while chunk := source.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def storescu(port: int, path: Path, calling_ae: str, timeout: float = 1800.0) -> subprocess.CompletedProcess[str]:
    """Send one file with dcmtk ``storescu`` (128 KiB PDUs, ``TCP_NODELAY``); return the finished process."""
    command = [STORESCU, "-aet", calling_ae, "-aec", "PACSVLM", "-xs", "--max-pdu", "131072", "-v"]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Send one large multi-frame instance to a fresh listener; print the figures and the summary line."""
    parser = argparse.ArgumentParser(prog="python -m bench.large_instance", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1024, help="1024 x 1024 16-bit frames (default 1024: 2 GiB)")
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="Redis database to use (flushed)")
    args = parser.parse_args(argv)
    mib = args.frames * FRAME_BYTES / 2**20
    with (
        tempfile.TemporaryDirectory(prefix="pacsvlm-large-") as tmp,
        Deployment(Path(tmp), args.broker_url) as deploy,
    ):
        source = Path(tmp) / "large.dcm"
        started = time.monotonic()
        sop_uid, study_uid = write_multiframe(source, args.frames)
        console.print(f"wrote {source.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s")
        limit = str(args.frames * FRAME_BYTES + 2**20)
        listener = deploy.start_listener({"PACSVLM_STABLE_SECONDS": "3600", "PACSVLM_MAX_INSTANCE_BYTES": limit})
        assert listener.process is not None
        pid, port = listener.process.pid, deploy.dicom_port
        warm = Path(tmp) / "warm.dcm"
        write_multiframe(warm, 1)
        if storescu(port, warm, CALLING_AE).returncode != 0:  # the first association loads what it needs
            console.print("warm-up send failed")
            return 1
        time.sleep(1)
        reset_peak_rss(pid)
        before = peak_rss_mib(pid)  # the peak starts again from the RSS of now
        started = time.monotonic()
        sent = storescu(port, source, CALLING_AE)
        seconds = time.monotonic() - started
        growth = peak_rss_mib(pid) - before
        stored = next(deploy.data_dir.rglob(f"{study_uid}/*/{sop_uid}.dcm"), None)
        intact = stored is not None and dataset_digest(stored) == dataset_digest(source)
        console.print(f"storescu exit {sent.returncode}; stored {'intact' if intact else 'MISSING OR DIFFERENT'}")
        console.print(f"listener RSS before {before:.0f} MiB, peak while receiving {before + growth:.0f} MiB")
        console.print(f"large_instance mib={mib:.0f} seconds={seconds:.1f} rss_growth_mib={growth:.1f}")
        return 0 if sent.returncode == 0 and intact and growth < RSS_LIMIT_MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())
