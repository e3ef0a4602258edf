"""Named DIMSE status codes the listener answers with (PS3.4 Annex B and PS3.7 Annex C).

The intake names what became of an instance; :func:`for_result` is the one place that turns that name into
the status a C-STORE (or a STOW-RS failure reason, PS3.18 Table 10.5.3-2) carries.
"""

from __future__ import annotations

from typing import Final

from integration.intake.outcome import Result

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
#: Refused: not authorized (an upload to a study of another site, an unrequested instance from a prior source).
NOT_AUTHORIZED: Final = 0x0124
#: Failure (DIMSE-N, PS3.7 Annex C): an attribute's value is not allowed (a bad step status, a malformed UID).
INVALID_ATTRIBUTE_VALUE: Final = 0x0106
#: Failure (N-CREATE): an object with this SOP Instance UID exists already.
DUPLICATE_SOP_INSTANCE: Final = 0x0111
#: Failure (N-SET): no object with the requested SOP Instance UID.
NO_SUCH_OBJECT_INSTANCE: Final = 0x0112
#: Failure (N-CREATE/N-SET): a required attribute (or the whole data set) is missing.
MISSING_ATTRIBUTE: Final = 0x0120
#: Failure (N-CREATE/N-SET): the request is larger than we take (a normalized data set is held in memory).
RESOURCE_LIMITATION: Final = 0x0213
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
    INVALID_ATTRIBUTE_VALUE: "Failure: Invalid Attribute Value",
    DUPLICATE_SOP_INSTANCE: "Failure: Duplicate SOP Instance",
    NO_SUCH_OBJECT_INSTANCE: "Failure: No Such Object Instance",
    MISSING_ATTRIBUTE: "Failure: Missing Attribute",
    RESOURCE_LIMITATION: "Failure: Resource Limitation",
}


#: The status of each intake result.
FOR_RESULT: Final = {
    Result.STORED: SUCCESS,
    Result.DUPLICATE: SUCCESS,
    Result.TRANSFER_SYNTAX_NOT_SUPPORTED: TRANSFER_SYNTAX_NOT_SUPPORTED,
    Result.SOP_CLASS_NOT_SUPPORTED: SOP_CLASS_NOT_SUPPORTED,
    Result.DOES_NOT_MATCH_REQUEST: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Result.CANNOT_UNDERSTAND: CANNOT_UNDERSTAND,
    Result.NOT_THE_NAMED_STUDY: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Result.CONFLICTS_WITH_STUDY: INSTANCE_OF_ANOTHER_STUDY,
    Result.OTHER_SITE: NOT_AUTHORIZED,
    Result.NOT_REQUESTED: NOT_AUTHORIZED,
    Result.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
    Result.PROCESSING_FAILURE: PROCESSING_FAILURE,
}


def for_result(result: Result) -> int:
    """The DIMSE status answering an intake result."""
    return FOR_RESULT[result]
