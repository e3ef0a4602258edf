"""What a critical-finding notification says: the text of an e-mail, a webhook's JSON, an HL7 ORU to the RIS.

Every message names the critical categories (labels), says the draft is AI-generated and unverified, links
the study's page (``public_url`` + ``/studies/<Study Instance UID>``; the UID alone without ``public_url``)
and says how to acknowledge.  The patient's name and id and the accession number are added only for a
contact marked ``inside_hospital``; for any other channel they never leave (nor does the finding's text,
which might echo them).

The HL7 message is an ORU^R01 built with hl7apy at strict validation, like the report's
(:mod:`integration.reports.hl7`, whose escaping, control ids, timestamps and codes it reuses): PID-3 and
PID-5 are the HL7 null ``""`` outside the hospital, ORC/OBR carry the accession number only inside, an
NTE carries the AI notice, one OBX the Study Instance UID and one TX OBX per line of the text, flagged
``AA`` (critical abnormal, HL7 table 0078).  MSH-10 derives from the notification id, so a retry resends
the same message control id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from integration.reports.document import AI_DRAFT_NOTICE, PersonName
from integration.reports.hl7 import (
    CHARACTER_SET,
    HL7_NULL,
    HL7_VERSION,
    MESSAGE_TYPE,
    SENDING_APPLICATION,
    STUDY_UID_ID,
    control_id,
    escape_text,
    hl7_timestamp,
)
from integration.store.alerts import NotificationTarget
from integration.untrusted import clean_text

#: OBX-3 of the alert's text lines (a local code: there is no LOINC code for a critical-result alert).
ALERT_TEXT_ID = ("CRITALERT", "Critical result alert", "L")
#: OBX-8 of those lines: critical abnormal (HL7 table 0078).
CRITICAL_ABNORMAL = "AA"


@dataclass(frozen=True)
class AlertMessage:
    """One notification's content for one contact.

    Attributes
    ----------
    subject : str
        One line: the categories (an e-mail's subject).
    lines : tuple of str
        The text, line by line (patient data only when ``inside``).
    payload : dict
        The webhook's JSON body.
    inside : bool
        Whether the contact is inside the hospital (the text may name the patient).
    """

    subject: str
    lines: tuple[str, ...]
    payload: dict[str, Any]
    inside: bool

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines) + "\n"


def study_link(public_url: str | None, study_uid: str) -> str | None:
    """Return the study page's address, or None without ``public_url``."""
    return f"{public_url.rstrip('/')}/studies/{study_uid}" if public_url else None


def patient_display(target: NotificationTarget) -> str:
    """The patient's name as people read it (``Jane Doe``), cleaned; '' when unknown."""
    return clean_text(PersonName.from_dicom(target.patient_name).display, 192, one_line=True)


def build_message(
    target: NotificationTarget, *, inside: bool, public_url: str | None, ack_minutes: float
) -> AlertMessage:
    """Build the notification of one target for a contact inside or outside the hospital.

    Parameters
    ----------
    target : NotificationTarget
        The notification being attempted (with the study's patient data, used only when ``inside``).
    inside : bool
        The contact is marked ``inside_hospital``.
    public_url : str or None
        The review page's address as people reach it.
    ack_minutes : float
        Minutes before the next contact is notified.

    Returns
    -------
    AlertMessage
        Subject, lines and the webhook's JSON.
    """
    labels = ", ".join(target.labels) or "critical finding"
    link = study_link(public_url, target.study_uid)
    lines = [
        f"Critical finding in an AI-generated draft report: {labels}.",
        f"{AI_DRAFT_NOTICE} A radiologist must look at the study now.",
        f"Study: {link}" if link else f"Study Instance UID: {target.study_uid}",
    ]
    if target.site:
        lines.append(f"Site: {target.site}")
    lines.append(f"Raised: {target.raised_at.strftime('%Y-%m-%d %H:%M UTC')} (alert {target.alert_id})")
    payload: dict[str, Any] = {
        "alert_id": target.alert_id,
        "notification_id": target.notification_id,
        "level": target.level,
        "categories": [{"code": c, "label": lab} for c, lab in zip(target.codes, target.labels, strict=False)],
        "study_uid": target.study_uid,
        "study_url": link,
        "site": target.site,
        "raised_at": target.raised_at.isoformat(),
        "ai_generated": True,
        "verified": False,
    }
    if inside:
        name, patient_id = patient_display(target), clean_text(target.patient_id, 64, one_line=True)
        accession = clean_text(target.accession_number, 16, one_line=True)
        lines.append(f"Patient: {name or '(no name)'}, MRN {patient_id or '(none)'}")
        if accession:
            lines.append(f"Accession: {accession}")
        payload["patient"] = {"name": name, "id": patient_id}
        payload["accession_number"] = accession or None
    lines.append(
        f"Acknowledge on the study page (or: pacs-vlm alerts ack {target.alert_id} --by NAME); "
        f"unacknowledged after {ack_minutes:g} minutes, the next contact is notified."
    )
    payload["text"] = "\n".join(lines)
    subject = clean_text(f"Critical finding (AI draft, unverified): {labels}", 200, one_line=True)
    return AlertMessage(subject, tuple(lines), payload, inside)


def alert_oru(
    target: NotificationTarget,
    message: AlertMessage,
    *,
    receiving_application: str = "RIS",
    receiving_facility: str = "",
) -> str:
    r"""Render a notification as an HL7 v2.5.1 ORU^R01 (ER7, segments separated by ``\r``).

    Parameters
    ----------
    target : NotificationTarget
        The notification (ids, study, patient data used only when ``message.inside``).
    message : AlertMessage
        Its text.
    receiving_application, receiving_facility : str
        MSH-5 and MSH-6 (the destination's).

    Returns
    -------
    str
        The message; the same notification always gives the same message.

    Raises
    ------
    hl7apy.exceptions.ValidationError
        If the message fails hl7apy's strict structure validation (a bug here).
    """
    oru = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = oru.msh
    msh.msh_3 = SENDING_APPLICATION
    if receiving_application.strip():
        msh.msh_5 = escape_text(receiving_application.strip())
    if receiving_facility.strip():
        msh.msh_6 = escape_text(receiving_facility.strip())
    msh.msh_7 = hl7_timestamp(target.raised_at)
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = control_id(f"alert:{target.notification_id}")
    msh.msh_11 = "P"
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = CHARACTER_SET
    result = oru.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
    pid.pid_1 = "1"
    pid.pid_3 = HL7_NULL
    pid.pid_5 = HL7_NULL
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if message.inside:
        name = PersonName.from_dicom(target.patient_name)
        if target.patient_id.strip():
            pid.pid_3 = f"{escape_text(target.patient_id.strip())}^^^^MR"
        if name.family or name.given:
            pid.pid_5 = "^".join(escape_text(part) for part in (name.family, name.given)).rstrip("^")
        if accession := escape_text(target.accession_number.strip()):
            orc.orc_2 = orc.orc_3 = obr.obr_2 = obr.obr_3 = accession
    obr.obr_4 = "^" + escape_text(ALERT_TEXT_ID[1])
    obr.obr_22 = hl7_timestamp(target.raised_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = "P"
    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_3 = escape_text(AI_DRAFT_NOTICE)
    _obx(order, 1, "ST", STUDY_UID_ID, escape_text(target.study_uid), flag="")
    for number, line in enumerate(message.lines, start=2):
        _obx(order, number, "TX", ALERT_TEXT_ID, escape_text(line), flag=CRITICAL_ABNORMAL)
    oru.validate()
    return str(oru.to_er7())


def _obx(group: Any, number: int, value_type: str, code: tuple[str, str, str], value: str, *, flag: str) -> None:
    obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
    obx.obx_1 = str(number)
    obx.obx_2 = value_type
    obx.obx_3 = "^".join(escape_text(part) for part in code)
    obx.obx_5 = value
    if flag:
        obx.obx_8 = flag
    obx.obx_11 = "P"
