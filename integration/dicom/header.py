"""Moved to :mod:`integration.intake.header` (header checks are the intake's); kept for importers not yet moved."""

from integration.intake.header import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    InstanceHeader,
    SopClassMismatch,
    file_meta_bytes,
    is_valid_uid,
    read_header,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION",
    "InstanceHeader",
    "SopClassMismatch",
    "file_meta_bytes",
    "is_valid_uid",
    "read_header",
]
