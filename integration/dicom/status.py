"""Named DIMSE status codes the listener answers with (PS3.4 Annex B and PS3.7 Annex C)."""

from __future__ import annotations

from typing import Final

SUCCESS: Final = 0x0000
#: Refused: out of resources (storage full, database unavailable, write failed).
OUT_OF_RESOURCES: Final = 0xA700
#: Error: data set does not match SOP class (or its UIDs disagree with the request).
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: cannot understand (malformed, truncated or missing/invalid UIDs).
CANNOT_UNDERSTAND: Final = 0xC000
#: Refused: SOP class not supported.
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
#: Failure: processing failure (an unexpected error in our own code).
PROCESSING_FAILURE: Final = 0x0110
#: Refused: unrecognized operation (a DIMSE service we do not provide).
UNRECOGNIZED_OPERATION: Final = 0x0211
#: Failure: the transfer syntax is not one we accept (STOW-RS parts; the listener negotiates instead).
TRANSFER_SYNTAX_NOT_SUPPORTED: Final = 0xC122
#: Refused: not authorized (an upload to a study of another site).
NOT_AUTHORIZED: Final = 0x0124
#: Error (0xA900, "does not match"): the instance's series, SOP instance or patient is another study's.
INSTANCE_OF_ANOTHER_STUDY: Final = DATASET_DOES_NOT_MATCH_SOP_CLASS

NAMES: Final = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set Does Not Match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot Understand",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class Not Supported",
    PROCESSING_FAILURE: "Failure: Processing Failure",
    UNRECOGNIZED_OPERATION: "Refused: Unrecognized Operation",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Failure: Transfer Syntax Not Supported",
    NOT_AUTHORIZED: "Refused: Not Authorized",
}


def for_conflict(conflict: str) -> int:
    """The status refusing an instance that conflicts with its study (``integration.store.ingest.Conflict``)."""
    return NOT_AUTHORIZED if conflict == "site" else INSTANCE_OF_ANOTHER_STUDY
