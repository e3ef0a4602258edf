"""Settings: one validated object, read from ``PACSVLM_*`` environment variables.

Embedded defaults need no servers: a SQLite file and instance files under
``./var/`` and a file-system Celery transport.  Production sets
``PACSVLM_DATABASE_URL=postgresql+psycopg://...`` and
``PACSVLM_BROKER_URL=redis://...``; the code is the same.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from integration.destinations import Destination, unique_names
from integration.imaging.routing import RoutingRule
from integration.order_senders import OrderSender, check_sender_keys
from integration.prior_sources import PriorSource, unique_source_names
from integration.retention_settings import RetentionPolicy, unique_policies
from integration.safety_settings import AlertContact, CriticalCategory, unique_category_codes, unique_contact_names
from integration.sso_settings import SingleSignOn
from integration.viewer_links import ViewerLink

_AE_TITLE = re.compile(r"^[\x20-\x7e]{1,16}$")
#: Names of configured models (``PACSVLM_MODELS`` keys), as stored in ``analysis_jobs.model_name``.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AE_TITLE.match(value) or "\\" in value:
        raise ValueError(f"not a valid AE title: {value!r} (1-16 printable ASCII characters, no backslash)")
    return value


class CallingAE(BaseModel):
    """A peer that may send to the listener (one entry of the calling-AE allowlist).

    Attributes
    ----------
    hosts : list of str
        Addresses the peer may connect from; empty means any address.
    stable_seconds : float, optional
        Idle time after which a study from this peer is complete; the global
        ``stable_seconds`` when omitted.
    site : str, optional
        Code of the site (``pacs-vlm sites add``) whose radiologists see this peer's studies.
    """

    hosts: list[str] = Field(default_factory=list)
    stable_seconds: Annotated[float, Field(gt=0)] | None = None
    site: Annotated[str, Field(min_length=1, max_length=16)] | None = None


class Settings(BaseSettings):
    """All settings of pacs-vlm, validated at start-up.

    Every field is read from the environment variable ``PACSVLM_<FIELD>``
    (case-insensitive); dictionaries and lists are given as JSON.
    """

    model_config = SettingsConfigDict(
        env_prefix="PACSVLM_", env_file=None, extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    storage_dir: Path | None = None

    ae_title: str = "PACSVLM"
    listen_host: str = "0.0.0.0"
    listen_port: Annotated[int, Field(ge=1, le=65535)] = 11112
    calling_aes: dict[str, CallingAE] = Field(default_factory=dict)
    accept_any_calling_ae: bool = False
    max_associations: Annotated[int, Field(ge=1)] = 16
    #: Associations one calling AE, or one host, may hold at once (defaults: half of ``max_associations``;
    #: all of them for a host, which may run several AEs).
    max_associations_per_ae: Annotated[int, Field(ge=1)] | None = None
    max_associations_per_host: Annotated[int, Field(ge=1)] | None = None
    #: Slots only an AE and host holding no association may take (at most a quarter of ``max_associations``).
    reserved_associations: Annotated[int, Field(ge=0)] = 2
    #: Connections waiting to associate (TLS handshake, association request), in all and per host; more are
    #: closed at once.
    max_pending_connections: Annotated[int, Field(ge=1)] = 64
    max_pending_per_host: Annotated[int, Field(ge=1)] = 16
    #: A host rejected this many times within ``rejection_window`` seconds is turned away at connect for
    #: ``rejected_host_block`` seconds (doubling while it keeps at it).
    rejections_before_block: Annotated[int, Field(ge=1)] = 20
    rejection_window: Annotated[float, Field(gt=0)] = 10.0
    rejected_host_block: Annotated[float, Field(gt=0)] = 30.0
    #: Association request bytes one host may have negotiated per second (a burst of 8 seconds' worth); more
    #: are rejected (transient) and count towards turning the host away.  0: no budget.
    association_request_budget: Annotated[int, Field(ge=0)] = 262_144
    max_pdu_length: Annotated[int, Field(ge=4096, le=4_194_304)] = 131_072
    max_instance_bytes: Annotated[int, Field(ge=1024)] = 2_147_483_648
    #: Largest STOW-RS request body (all parts together) and photo upload request.
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 4_294_967_296
    #: Largest body of any other request (JSON, forms): refused (413) before it is read.
    max_request_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    #: Most parts (instances) in one STOW-RS request; more is refused (413) as it arrives.
    max_stow_parts: Annotated[int, Field(ge=1)] = 10_000
    #: Most pixels of an uploaded photo (its DICOM file holds 3 bytes per pixel); more is refused unread.
    max_photo_pixels: Annotated[int, Field(ge=1)] = 24_000_000
    #: Uploads (STOW-RS requests and photos) one user may have in progress at once, and start per minute.
    max_uploads_in_progress: Annotated[int, Field(ge=1)] = 4
    max_uploads_per_minute: Annotated[int, Field(ge=1)] = 600
    acse_timeout: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 60.0
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    fsync: bool = True
    min_free_bytes: Annotated[int, Field(ge=0)] = 1_073_741_824
    #: DICOM TLS (PS3.15 Annex B; TLS 1.2+, BCP 195 ciphers): the listener's PEM certificate (chain) and its
    #: unencrypted private key.  Set both to serve TLS; checked when the listener starts.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: PEM CA certificates: when set, every TLS peer must present a client certificate issued by one of them.
    tls_ca_certificates: Path | None = None
    #: Port of the TLS listener.  Unset (or equal to ``listen_port``): ``listen_port`` speaks TLS only.
    #: Set to another port (2762 is IANA's dicom-tls): TLS there, plain TCP stays on ``listen_port``.
    tls_port: Annotated[int, Field(ge=1, le=65535)] | None = None

    #: Addresses of reverse proxies whose X-Forwarded-For/-Proto the API believes (comma-separated; ``*`` for
    #: any).  Empty (the default): no proxy is trusted and the client is the peer of the TCP connection.
    forwarded_allow_ips: str = ""
    #: ``/metrics`` and ``/openapi.json`` answer anyone when true; otherwise only loopback clients, an
    #: administrator's session or ``Authorization: Bearer <operations_token>``.
    operations_public: bool = False
    operations_token: SecretStr | None = None
    #: ``/health`` fails (503) when free space is below ``min_free_bytes`` plus this much: instances of
    #: that size would already be refused.
    health_free_margin_bytes: Annotated[int, Field(ge=0)] = 268_435_456

    stable_seconds: Annotated[float, Field(gt=0)] = 30.0
    assembly_interval: Annotated[float, Field(gt=0)] = 1.0
    resend_after_seconds: Annotated[float, Field(gt=0)] = 900.0
    analysis_queue: str = "analysis"
    #: Queue of stat requests: workers consume it before the analysis queue (strict priority on Redis).
    stat_queue: str = "analysis.stat"

    #: Folder of the model's weights, processor and tokenizer (staged by the administrator; never downloaded).
    model: Path | None = None
    #: More staged models by name, for second opinions (JSON object, ``{"medgemma": "/models/medgemma-4b-it"}``);
    #: a job without a model name runs on ``model``.  Names: lower case letters, digits, ``.``, ``_``, ``-``.
    models: dict[str, Path] = Field(default_factory=dict)
    #: ``auto`` (first GPU, else CPU), ``cpu`` or ``cuda:<n>``: one worker process per GPU.
    model_device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 512
    #: Studies one worker process drafts together: 1 (the default) drafts one at a time; N > 1 holds up to N
    #: messages (a threads pool of N) and runs their requests to the in-process model as one batch.
    batch_size: Annotated[int, Field(ge=1, le=64)] = 1
    #: How long a batch waits for more studies after its first one arrives (milliseconds).
    batch_wait_ms: Annotated[int, Field(ge=0, le=60000)] = 200
    #: An OpenAI-compatible server (vLLM, SGLang, ``transformers serve``), ``http(s)://host:port``: when set,
    #: the default model runs there instead of in the worker (``model`` is then not needed); named ``models``
    #: still run in the worker.
    model_server_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    #: The model's name at the server (vLLM's ``--served-model-name``); unset: the one ``/v1/models`` lists.
    model_server_model: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    #: Sent as ``Authorization: Bearer <key>``.
    model_server_api_key: SecretStr | None = None
    #: The served model's family (``models/registry.py``: image limit, system role); unset: guessed from
    #: its name, else ``openai-compatible``.
    model_server_family: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    #: Requests in flight at once per worker process, and seconds to wait for one answer.
    model_server_concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    model_server_timeout: Annotated[float, Field(gt=0)] = 300.0
    #: Whether the server is inside the hospital's trust boundary.  False (the default): only pixels and
    #: de-identified minimum metadata leave (DICOM PS3.15 basic profile; see worker/outbound.py).
    model_server_trusted: bool = False
    #: Images per study sent to the model; overrides the routing rule's number when set.
    max_images: Annotated[int, Field(ge=1, le=1024)] | None = None
    #: Which series go to the model and how they are shown: a JSON list of routing rule objects
    #: (``[{"modality": "CT", "max_images": 4}]``), tried in order; the first that accepts a series of the
    #: study is used.  Unset means ``integration.imaging.routing.DEFAULT_RULES``; an empty list is refused.
    routing_rules: Annotated[list[RoutingRule], Field(min_length=1)] | None = None
    #: Longest image side before padding to square (the processor resizes further).
    image_size: Annotated[int, Field(ge=64, le=4096)] = 1024
    #: Deliveries of one analysis job before it ends ``failed`` (a study that keeps killing the worker).
    analysis_max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    analysis_soft_time_limit: Annotated[float, Field(gt=0)] = 1800.0
    #: Where report documents go (JSON list; see integration/export/destinations.py).
    destinations: list[Destination] = Field(default_factory=list)
    delivery_queue: str = "delivery"
    #: Attempts per delivery before it is ``dead_letter``; waits double from the base up to the maximum.
    delivery_max_attempts: Annotated[int, Field(ge=1, le=50)] = 8
    delivery_backoff_seconds: Annotated[float, Field(gt=0)] = 30.0
    delivery_backoff_max_seconds: Annotated[float, Field(gt=0)] = 3600.0
    analysis_time_limit: Annotated[float, Field(gt=0)] = 1860.0
    #: Archives prior studies are searched in and fetched from (JSON list; see integration/prior_sources.py).
    #: Our own store is always searched first; empty: local priors only.
    prior_sources: list[PriorSource] = Field(default_factory=list)
    #: A stable study waits at most this long for its prior search before its analysis job is created
    #: (0: never waits; a prior that is not ready by then is "not available", with the reason recorded).
    prior_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    #: A FHIR server asked for a prior's DiagnosticReport when neither we nor the archive hold its report.
    prior_fhir_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    #: Sent to ``prior_fhir_url`` as ``Authorization: Bearer <token>``.
    prior_fhir_token: SecretStr | None = None

    #: HL7 v2 order listener (MLLP, ORM^O01 / OMI^O23): off unless a port is set; runs in ``pacs-vlm listen``.
    mllp_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    mllp_host: str = "0.0.0.0"
    #: Who may send orders (JSON; see integration/order_senders.py).  Empty: every message is refused (AR).
    hl7_senders: dict[str, OrderSender] = Field(default_factory=dict)
    #: MLLP over TLS: the listener's PEM certificate and key (both or neither), and CAs a client certificate
    #: must chain to (none asked for when unset).
    mllp_tls_certificate: Path | None = None
    mllp_tls_private_key: Path | None = None
    mllp_tls_ca_certificates: Path | None = None
    #: Largest HL7 message taken (bytes, framing excluded); a longer one is answered AR and dropped unread.
    max_hl7_message_bytes: Annotated[int, Field(ge=1024, le=67_108_864)] = 1_048_576
    #: Seconds an MLLP connection may stay idle (and a message may take to arrive) before it is closed.
    mllp_timeout: Annotated[float, Field(gt=0)] = 60.0

    # The safety net around the model (issue 17; RELIABILITY.md, "Clinical safety").
    #: Bind in-process decoding to the draft's JSON schema (xgrammar); off: free decoding, lenient parser.
    constrained_decoding: bool = True
    #: Send the schema to a model server as ``response_format``: ``auto`` tries it and falls back to free
    #: decoding when the server refuses it; ``json_schema`` always (a refusal fails the job); ``off`` never.
    model_server_schema: Literal["auto", "json_schema", "off"] = "auto"
    #: Finding confidence bands (``models.confidence``): below ``confidence_low`` is marked low on the review
    #: page; at or above ``confidence_high`` is high.
    confidence_low: Annotated[float, Field(ge=0, le=1)] = 0.5
    confidence_high: Annotated[float, Field(ge=0, le=1)] = 0.8
    #: Critical result categories (see integration/safety_settings.py); None: the ACR-based defaults.
    critical_categories: list[CriticalCategory] | None = None
    #: The review page's address as people reach it (``https://pacs-vlm.hospital.example``): links in notifications.
    public_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    #: The escalation chain for critical findings, in order (see integration/safety_settings.py).
    alert_contacts: list[AlertContact] = Field(default_factory=list)
    #: Minutes a notified contact has to acknowledge before the next contact is notified.
    alert_ack_minutes: Annotated[float, Field(gt=0, le=1440)] = 15.0
    #: Tries per notification before it is a dead letter; backoff as for deliveries.
    alert_max_attempts: Annotated[int, Field(ge=1, le=50)] = 8
    #: SMTP server for e-mail contacts (plain, STARTTLS when ``smtp_starttls``; login when a user is set).
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    smtp_from: Annotated[str, Field(min_length=3, max_length=254)] = "pacs-vlm@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: Annotated[float, Field(gt=0)] = 30.0
    #: Burned-in text (OCR, tesseract) in an image bound for a model server outside the trust boundary:
    #: ``withhold`` the image, ``redact`` the words that look like a name, id or date, or ``off``.
    burned_in_text: Literal["withhold", "redact", "off"] = "withhold"
    #: Tesseract languages for that OCR (``eng``, ``eng+deu``).
    ocr_languages: Annotated[str, Field(pattern=r"^[a-z_]{3,16}(\+[a-z_]{3,16}){0,4}$")] = "eng"
    #: The hospital's image viewers, linked from the worklist and study page (see integration/viewer_links.py).
    viewers: list[ViewerLink] = Field(default_factory=list)
    #: Origins (``https://ohif.hospital.example``) whose pages may call ``/dicomweb`` (CORS); none by default.
    dicomweb_cors_origins: list[Annotated[str, Field(pattern=r"^https?://[^\s/?#]+$")]] = Field(default_factory=list)
    #: Hours a viewer's DICOMweb bearer token lives (``POST /api/viewer-token``).
    viewer_token_hours: Annotated[float, Field(gt=0, le=24)] = 8.0
    #: Minutes a radiologist's claim on a study lasts without activity (opening the page or a change renews it).
    claim_minutes: Annotated[float, Field(gt=0, le=1440)] = 20.0
    #: IANA time zone the pages show times in (``Europe/Berlin``); None: the server's local zone.  The zone's
    #: abbreviation is shown beside every time.
    timezone: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: Most photos one telemedicine case (one study) may hold.
    upload_case_max_photos: Annotated[int, Field(ge=1, le=500)] = 20
    #: Longest clinical question a telemedicine case may carry (characters; kept whole in the database and in
    #: a long-text DICOM attribute, and cut to 64 only in the LO element modalities read).
    upload_question_chars: Annotated[int, Field(ge=64, le=10_000)] = 2000
    # ---- issue 20: retention and the store check ----
    #: Retention policies (see integration/retention_settings.py); empty: everything is kept forever.
    retention: list[RetentionPolicy] = Field(default_factory=list)
    #: ``pacs-vlm store check --repair`` removes a file without a row only when it is older than this (a file
    #: being written right now has no row yet).
    store_check_grace_seconds: Annotated[float, Field(ge=60)] = 3600.0

    @field_validator("retention")
    @classmethod
    def _one_policy_per_site_and_source(cls, value: list[RetentionPolicy]) -> list[RetentionPolicy]:
        return unique_policies(value)

    # ---- issue 20: failed work ----
    # ---- issue 20: metrics ----
    # ---- issue 20: configuration in the database (live reload) ----
    #: Seconds between a process's checks of the configuration's generation number (one primary-key SELECT):
    #: a change made on the admin pages or with ``pacs-vlm config`` is in force everywhere within this time.
    config_poll_seconds: Annotated[float, Field(ge=0.1, le=300)] = 2.0
    # ---- issue 20: shadow mode ----
    # ---- issue 20: single sign-on and sessions ----
    #: The OpenID Connect provider people sign in through (see integration/sso_settings.py); None: local only.
    sso: SingleSignOn | None = None
    #: Who may sign in with a local password: ``all``, ``admins`` (break-glass) or ``none``; unset: ``admins``
    #: while single sign-on is configured, else ``all``.  Each local sign-in beside single sign-on is audited.
    local_sign_in: Literal["all", "admins", "none"] | None = None
    #: Hours a sign-in session lives at most, however active (viewer tokens: ``viewer_token_hours``).
    session_hours: Annotated[float, Field(gt=0, le=24 * 7)] = 8.0
    #: Minutes of inactivity after which a sign-in session ends (pages go to the sign-in form, the API 401).
    session_idle_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 30.0
    # ---- issue 20: disk pressure ----
    #: Free space below which the listener's purge loop purges the oldest eligible studies (read longest ago
    #: first) until free space is back above it plus ``purge_hysteresis_bytes``; None: four times
    #: ``min_free_bytes``.  Only studies the retention policies cover ever go (none configured: nothing does).
    purge_free_bytes: Annotated[int, Field(ge=0)] | None = None
    #: How far above ``purge_free_bytes`` a pressure purge frees before it stops (None: ``min_free_bytes``).
    purge_hysteresis_bytes: Annotated[int, Field(ge=0)] | None = None
    #: Seconds between the purge loop's free-space checks.
    purge_check_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: Minutes between the listener's scheduled purges of what the policies let go; 0: none (run ``pacs-vlm
    #: purge`` from cron instead).
    purge_interval_minutes: Annotated[float, Field(ge=0, le=10_080)] = 60.0
    #: Under disk pressure, may the instances of read studies (signed or rejected) go before their policy's
    #: ``instance_days``?  Off: pressure only brings the policy purge forward.  Reports always stay.
    purge_early_under_pressure: bool = False
    #: The share of the store's file system pacs-vlm may fill (bytes); free space is then the smaller of the
    #: file system's and this less what the instance store holds.  None: the whole file system.
    storage_quota_bytes: Annotated[int, Field(gt=0)] | None = None
    #: Seconds after which the instance store's usage (counted as files are written and purged) is counted
    #: again from the files, catching what other processes wrote or removed.
    storage_usage_recount_seconds: Annotated[float, Field(gt=0)] = 300.0

    @property
    def purge_mark_bytes(self) -> int:
        """Free space below which a pressure purge starts (``purge_free_bytes`` or its default)."""
        return self.purge_free_bytes if self.purge_free_bytes is not None else 4 * self.min_free_bytes

    @property
    def purge_target_bytes(self) -> int:
        """Free space a pressure purge frees up to before it stops."""
        extra = self.purge_hysteresis_bytes if self.purge_hysteresis_bytes is not None else self.min_free_bytes
        return self.purge_mark_bytes + extra

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin") from None
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title_valid(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("destinations")
    @classmethod
    def _destination_names_unique(cls, value: list[Destination]) -> list[Destination]:
        return unique_names(value)

    @field_validator("hl7_senders")
    @classmethod
    def _hl7_senders_valid(cls, value: dict[str, OrderSender]) -> dict[str, OrderSender]:
        return check_sender_keys(value)

    @field_validator("alert_contacts")
    @classmethod
    def _alert_contact_names_unique(cls, value: list[AlertContact]) -> list[AlertContact]:
        return unique_contact_names(value)

    @field_validator("critical_categories")
    @classmethod
    def _category_codes_unique(cls, value: list[CriticalCategory] | None) -> list[CriticalCategory] | None:
        return unique_category_codes(value)

    @model_validator(mode="after")
    def _confidence_bands_ordered(self) -> Settings:
        if self.confidence_low > self.confidence_high:
            raise ValueError("confidence_low must not be above confidence_high")
        return self

    @field_validator("prior_sources")
    @classmethod
    def _prior_source_names_unique(cls, value: list[PriorSource]) -> list[PriorSource]:
        return unique_source_names(value)

    @field_validator("models")
    @classmethod
    def _model_names_valid(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not MODEL_NAME.match(name):
                raise ValueError(
                    f"not a valid model name: {name!r} (1-64 characters: a-z, 0-9, '.', '_', '-'; "
                    "starting with a letter or digit)"
                )
        return value

    @field_validator("calling_aes")
    @classmethod
    def _calling_aes_valid(cls, value: dict[str, CallingAE]) -> dict[str, CallingAE]:
        return {_check_ae_title(title): peer for title, peer in value.items()}

    @model_validator(mode="after")
    def _time_limits_ordered(self) -> Settings:
        if self.analysis_time_limit <= self.analysis_soft_time_limit:
            raise ValueError("analysis_time_limit must be above analysis_soft_time_limit")
        return self

    @model_validator(mode="after")
    def _queues_distinct(self) -> Settings:
        queues = [self.stat_queue, self.analysis_queue, self.delivery_queue]
        if len(set(queues)) != len(queues) or not all(q.strip() and "," not in q for q in queues):
            raise ValueError(
                "stat_queue, analysis_queue and delivery_queue must be three different, non-empty names "
                f"without commas (got {', '.join(map(repr, queues))})"
            )
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("DICOM TLS needs both tls_certificate and tls_private_key (or neither)")
        if self.tls_certificate is None and (self.tls_ca_certificates is not None or self.tls_port is not None):
            raise ValueError("tls_ca_certificates and tls_port need tls_certificate and tls_private_key")
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether the listener serves DICOM TLS."""
        return self.tls_certificate is not None

    @property
    def plain_listener(self) -> bool:
        """Whether the listener serves plain TCP on ``listen_port`` (no TLS, or TLS on a port of its own)."""
        return not self.tls_enabled or (self.tls_port is not None and self.tls_port != self.listen_port)

    @property
    def visibility_timeout(self) -> float:
        """Seconds Redis waits before re-delivering an unacknowledged task: above the hard time limit."""
        return max(3600.0, self.analysis_time_limit + 600.0)

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'pacs-vlm.sqlite').as_posix()}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "instances"
        return self

    @property
    def instance_root(self) -> Path:
        """Folder of the durable instance store."""
        assert self.storage_dir is not None  # filled by the validator
        return self.storage_dir

    @property
    def broker_folder(self) -> Path:
        """Folder of the file-system Celery transport (embedded defaults only)."""
        return self.data_dir / "broker"

    def stable_seconds_for(self, calling_ae: str) -> float:
        """Return the idle time that completes a study sent by ``calling_ae``.

        Parameters
        ----------
        calling_ae : str
            The sender's AE title.

        Returns
        -------
        float
            Seconds without a new instance after which the study is stable.
        """
        peer = self.calling_aes.get(calling_ae.strip())
        if peer is not None and peer.stable_seconds is not None:
            return peer.stable_seconds
        return self.stable_seconds


@lru_cache(maxsize=1)
def _environment_settings() -> Settings:
    return Settings()


_installed: Settings | None = None


def get_settings() -> Settings:
    """Return the process-wide settings: those installed by :func:`install_settings`, else the environment's.

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    pydantic.ValidationError
        A ``PACSVLM_*`` variable is invalid.
    """
    return _installed if _installed is not None else _environment_settings()


def install_settings(settings: Settings | None) -> None:
    """Make ``settings`` the process's settings (a command's overrides; forked children inherit them).

    ``None`` goes back to reading the environment again.
    """
    global _installed
    _installed = settings
    _environment_settings.cache_clear()
