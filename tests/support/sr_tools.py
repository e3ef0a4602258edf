"""The DICOM tools that judge our SR documents: dicom3tools' dciodvfy (the IOD's rules) and dcmtk's dsrdump."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
DSRDUMP = shutil.which("dsrdump") or "/usr/bin/dsrdump"
#: dciodvfy warnings we accept: our private coding scheme (for "Limitations", declared in the Coding Scheme
#: Identification Sequence) is not a DICOM defined term, nor Cornerstone's free-text scheme that OHIF labels region
#: findings with (declared likewise; see integration.reports.sr_measurement); a source's patient name form is
#: copied as it is.
ACCEPTED_WARNINGS = ("<99PACSVLM>", "<CORNERSTONEJS>", "(0x0010,0x0010) PN Patient's Name")


def check_with_tools(path: Path) -> list[str]:
    """Run dciodvfy (no 'Error' lines allowed) and dsrdump (exit 0); return dciodvfy's warnings."""
    assert Path(DCIODVFY).is_file() and Path(DSRDUMP).is_file(), (
        "install dicom3tools and dcmtk (scripts/system-deps.sh)"
    )
    verify = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    lines = (verify.stdout + verify.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)
    dump = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    assert dump.returncode == 0, dump.stdout + dump.stderr
    warnings = [line for line in lines if line.startswith("Warning")]
    unexpected = [line for line in warnings if not any(accepted in line for accepted in ACCEPTED_WARNINGS)]
    assert not unexpected, "\n".join(lines)
    return warnings
