"""The channels a critical-finding contact is reached by: a webhook (HTTP POST of JSON), an e-mail (SMTP), an HL7 ORU.

They live with the other outbound transports (the alert's content is :mod:`integration.alerts.message`): the
HL7 channel sends through :mod:`integration.export.mllp`, and the listener's reconciler, which escalates
alerts, must not reach the network layer through :mod:`integration.alerts` (a cycle between folders).

Each sender returns a short receipt or raises :class:`~integration.export.outgoing.DeliveryFailed` with a
reason that is safe to store and log (a status code, an exception's type, the RIS's refusal): never the
message, which may name the patient.

- webhook: ``POST`` of :attr:`AlertMessage.payload` to the contact's address, with ``Authorization: Bearer
  <token>`` when the contact has a token; any 2xx answer is taken.
- e-mail: ``smtplib`` to ``smtp_host:smtp_port`` (STARTTLS when ``smtp_starttls``, verified against the
  system's CAs; login when ``smtp_username`` is set), from ``smtp_from`` to the contact's address.
- hl7: the contact's address names a configured destination of kind ``mllp``; the ORU of
  :func:`integration.alerts.message.alert_oru` is sent there by :func:`integration.export.mllp.send_mllp`,
  which waits for the RIS's ACK.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

import httpx

from integration.alerts.message import AlertMessage, alert_oru
from integration.config import Settings
from integration.export.mllp import send_mllp
from integration.export.outgoing import DeliveryFailed, OutgoingDocument
from integration.live_config import live_settings
from integration.safety_settings import AlertContact
from integration.store.alerts import NotificationTarget

#: Seconds a webhook may take to answer.
WEBHOOK_TIMEOUT_SECONDS = 30.0


def send_notification(
    settings: Settings, contact: AlertContact, target: NotificationTarget, message: AlertMessage
) -> str:
    """Send one notification over the contact's channel.

    Parameters
    ----------
    settings : Settings
        The settings (SMTP server, destinations).
    contact : AlertContact
        Who is told, and how.
    target : NotificationTarget
        The notification (its ids name the message).
    message : AlertMessage
        What it says (built for this contact).

    Returns
    -------
    str
        The channel's receipt (``HTTP 200``, ``250 accepted``, ``ACK AA``).

    Raises
    ------
    DeliveryFailed
        The channel did not take it (the reason carries no patient data).
    """
    if contact.channel == "webhook":
        return send_webhook(contact, message)
    if contact.channel == "email":
        return send_email(settings, contact, target, message)
    return send_hl7(settings, contact, target, message)


def send_webhook(contact: AlertContact, message: AlertMessage) -> str:
    """POST the message's JSON to the contact's URL (bearer token when set).

    Raises
    ------
    DeliveryFailed
        Not connected, timed out, or an answer other than 2xx.
    """
    headers = {"User-Agent": "pacs-vlm alerts"}
    if contact.token is not None:
        headers["Authorization"] = f"Bearer {contact.token.get_secret_value()}"
    try:
        response = httpx.post(contact.address, json=message.payload, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"webhook {contact.name!r}: {type(exc).__name__}") from None
    if not response.is_success:
        raise DeliveryFailed(f"webhook {contact.name!r} answered HTTP {response.status_code}")
    return f"HTTP {response.status_code}"


def send_email(settings: Settings, contact: AlertContact, target: NotificationTarget, message: AlertMessage) -> str:
    """Send the message as a plain-text e-mail through the configured SMTP server.

    Raises
    ------
    DeliveryFailed
        No SMTP server configured, not connected, STARTTLS or login refused, or the recipient refused.
    """
    if not settings.smtp_host:
        raise DeliveryFailed("no SMTP server configured (PACSVLM_SMTP_HOST) for e-mail contacts")
    mail = EmailMessage()
    mail["From"] = settings.smtp_from
    mail["To"] = contact.address
    mail["Subject"] = message.subject
    domain = settings.smtp_from.rpartition("@")[2] or "localhost"
    mail["Message-ID"] = make_msgid(f"alert-{target.notification_id}", domain=domain)
    mail.set_content(message.text)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                smtp.login(settings.smtp_username, password)
            refused = smtp.send_message(mail)
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(f"SMTP server answered {exc.smtp_code}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(f"SMTP to {settings.smtp_host}:{settings.smtp_port}: {type(exc).__name__}") from None
    if refused:
        raise DeliveryFailed("the SMTP server refused the recipient")
    return "250 accepted"


def send_hl7(settings: Settings, contact: AlertContact, target: NotificationTarget, message: AlertMessage) -> str:
    """Send the message as an ORU^R01 to the ``mllp`` destination the contact's address names.

    Raises
    ------
    DeliveryFailed
        No such ``mllp`` destination, or the RIS did not acknowledge the message.
    """
    destination = next(
        (d for d in live_settings(settings).destinations if d.name == contact.address and d.kind == "mllp"),
        None,
    )
    if destination is None:
        raise DeliveryFailed(f"contact {contact.name!r} names no configured mllp destination {contact.address!r}")
    er7 = alert_oru(
        target,
        message,
        receiving_application=destination.receiving_application,
        receiving_facility=destination.receiving_facility,
    )
    document = OutgoingDocument(
        kind="hl7",
        content=er7.encode("utf-8"),
        filename=f"alert-{target.notification_id}.hl7",
        media_type="x-application/hl7-v2+er7",
    )
    return send_mllp(destination, document)
