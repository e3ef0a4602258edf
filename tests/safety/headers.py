"""Real DICOM files for the safety tests: headers with chosen attributes, written to a test's tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from tests.imaging.builders import dataset, write


def images(folder: Path, *per_image: dict[str, Any], modality: str = "CT", **common: Any) -> list[Path]:
    """One file per ``per_image`` entry (its attributes by keyword), all of one series, with ``common`` attributes.

    The builder's patient is ``Doe^Jane``, ``PID-73519``, born ``19600229``; ``common`` may override them.
    """
    series = generate_uid()
    datasets = [
        dataset(series, modality=modality, number=number, pixels=False, **{**common, **attributes})
        for number, attributes in enumerate(per_image or ({},), start=1)
    ]
    return write(folder, datasets)
