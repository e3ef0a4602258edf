"""Settings: embedded defaults, the PACSVLM_ environment and validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from integration.config import CallingAE, Settings, get_settings, install_settings
from integration.imaging.routing import RoutingRule

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_defaults() -> None:
    settings = Settings()
    assert settings.data_dir == Path("var")
    assert settings.database_url == "sqlite:///var/pacs-vlm.sqlite"
    assert settings.broker_url == "filesystem://"
    assert settings.storage_dir == Path("var") / "instances"
    assert settings.instance_root == Path("var") / "instances"
    assert settings.broker_folder == Path("var") / "broker"
    assert settings.calling_aes == {}
    assert settings.accept_any_calling_ae is False  # unknown peers are refused by default
    assert settings.ae_title == "PACSVLM"
    assert settings.listen_port == 11112
    assert settings.stable_seconds == 30.0
    assert settings.fsync is True


def test_embedded_defaults_follow_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    url = make_url(settings.database_url)
    assert url.get_backend_name() == "sqlite"
    assert Path(url.database or "") == tmp_path / "pacs-vlm.sqlite"
    assert settings.instance_root == tmp_path / "instances"
    assert settings.broker_folder == tmp_path / "broker"


def test_explicit_values_are_kept(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://u@db/pacs",
        broker_url="redis://cache:6379/0",
        storage_dir=tmp_path / "shared",
    )
    assert settings.database_url == "postgresql+psycopg://u@db/pacs"
    assert settings.broker_url == "redis://cache:6379/0"
    assert settings.instance_root == tmp_path / "shared"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACSVLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PACSVLM_DATABASE_URL", "postgresql+psycopg://u@db/pacs")
    monkeypatch.setenv("PACSVLM_BROKER_URL", "redis://cache:6379/0")
    monkeypatch.setenv("PACSVLM_LISTEN_PORT", "11113")
    monkeypatch.setenv("PACSVLM_AE_TITLE", "ARCHIVE_AI")
    monkeypatch.setenv("PACSVLM_STABLE_SECONDS", "12.5")
    monkeypatch.setenv("PACSVLM_FSYNC", "false")
    monkeypatch.setenv("PACSVLM_ACCEPT_ANY_CALLING_AE", "true")
    monkeypatch.setenv("LISTEN_PORT", "1")  # without the prefix: ignored
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.database_url == "postgresql+psycopg://u@db/pacs"
    assert settings.broker_url == "redis://cache:6379/0"
    assert settings.instance_root == tmp_path / "instances"
    assert settings.listen_port == 11113
    assert settings.ae_title == "ARCHIVE_AI"
    assert settings.stable_seconds == 12.5
    assert settings.fsync is False
    assert settings.accept_any_calling_ae is True


def test_get_settings_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSVLM_LISTEN_PORT", "2000")
    first = get_settings()
    monkeypatch.setenv("PACSVLM_LISTEN_PORT", "3000")
    assert get_settings() is first
    assert first.listen_port == 2000
    install_settings(None)
    assert get_settings().listen_port == 3000
    install_settings(None)


@pytest.mark.parametrize("title", ["A" * 17, "BAD\\AE", "", "   ", "ÄRZTE", "TAB\tAE"], ids=repr)
def test_invalid_ae_titles_are_refused(title: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="AE title"):
        Settings(ae_title=title)
    with pytest.raises(ValidationError, match="AE title"):
        Settings(calling_aes={title: {}})
    if title == "":  # an empty variable means "not set" (env_ignore_empty): the default applies
        monkeypatch.setenv("PACSVLM_AE_TITLE", title)
        assert Settings().ae_title == "PACSVLM"
        return
    monkeypatch.setenv("PACSVLM_AE_TITLE", title)
    with pytest.raises(ValidationError, match="AE title"):
        Settings()


def test_ae_titles_are_trimmed() -> None:
    settings = Settings(ae_title="  PACSVLM2 ", calling_aes={" CT1  ": {}})
    assert settings.ae_title == "PACSVLM2"
    assert list(settings.calling_aes) == ["CT1"]
    assert Settings(ae_title="A" * 16).ae_title == "A" * 16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("listen_port", 0),
        ("listen_port", 65536),
        ("listen_port", "notaport"),
        ("stable_seconds", 0),
        ("max_pdu_length", 1000),
        ("min_free_bytes", -1),
        ("max_associations", 0),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_calling_aes_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PACSVLM_CALLING_AES",
        '{"CT1": {"hosts": ["10.0.0.5", "10.0.0.6"], "stable_seconds": 5}, "MR1": {}, " US1 ": {"hosts": []}}',
    )
    monkeypatch.setenv("PACSVLM_STABLE_SECONDS", "45")
    settings = Settings()
    assert set(settings.calling_aes) == {"CT1", "MR1", "US1"}
    assert settings.calling_aes["CT1"] == CallingAE(hosts=["10.0.0.5", "10.0.0.6"], stable_seconds=5)
    assert settings.calling_aes["MR1"].hosts == []
    assert settings.calling_aes["MR1"].stable_seconds is None
    assert settings.stable_seconds_for("CT1") == 5
    assert settings.stable_seconds_for(" CT1 ") == 5
    assert settings.stable_seconds_for("MR1") == 45
    assert settings.stable_seconds_for("US1") == 45
    assert settings.stable_seconds_for("UNKNOWN") == 45


@pytest.mark.parametrize(
    "value",
    [
        '{"CT1": {"stable_seconds": 0}}',
        '{"CT1": {"stable_seconds": -3}}',
        '{"CT1": {"hosts": "10.0.0.5"}}',
        '{"A_VERY_LONG_AE_TITLE": {}}',
        '["CT1"]',
    ],
)
def test_invalid_calling_aes_json_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSVLM_CALLING_AES", value)
    with pytest.raises(ValidationError):
        Settings()


def test_stable_seconds_for_defaults() -> None:
    settings = Settings(stable_seconds=7, calling_aes={"CT1": CallingAE(stable_seconds=2.5)})
    assert settings.stable_seconds_for("CT1") == 2.5
    assert settings.stable_seconds_for("OTHER") == 7


def test_empty_calling_aes_is_like_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSVLM_CALLING_AES", "")
    assert Settings().calling_aes == {}


def test_routing_rules_default_to_unset() -> None:
    assert Settings().routing_rules is None  # the pipeline then uses DEFAULT_RULES


def test_routing_rules_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSVLM_ROUTING_RULES", '[{"modality": "CT", "max_images": 4}]')
    rules = Settings().routing_rules
    assert rules is not None
    assert len(rules) == 1
    assert isinstance(rules[0], RoutingRule)
    assert rules[0] == RoutingRule(modality="CT", max_images=4)
    assert (rules[0].modality, rules[0].max_images, rules[0].windows) == ("CT", 4, ())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('[{"modality": "CT", "windows": ["liver"]}]', "unknown window preset"),
        ('[{"modality": "CT", "max_images": 0}]', "greater than or equal to 1"),
        ('[{"modality": "MR", "windows": ["brain"]}]', "Hounsfield"),
        ('[{"modality": "CT", "maximum_images": 4}]', "Extra inputs are not permitted"),
        ("[]", "at least 1 item"),
        ('{"modality": "CT"}', "valid list"),
    ],
)
def test_invalid_routing_rules_are_refused(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSVLM_ROUTING_RULES", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PACSVLM_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **extra)
    return env


def test_invalid_routing_rules_are_a_settings_error_at_start_up(tmp_path: Path) -> None:
    env = _clean_env(PACSVLM_DATA_DIR=str(tmp_path), PACSVLM_ROUTING_RULES='[{"modality": "CT", "windows": ["liver"]}]')
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "listen"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "invalid settings" in output
    assert "PACSVLM_ROUTING_RULES" in output
    assert "unknown window preset" in output
    assert "Traceback" not in output


def test_settings_import_neither_numpy_nor_pydicom() -> None:
    code = (
        "import sys, integration.config; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pydicom', 'PIL')); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_refused_setting_never_repeats_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    source = '{"name": "vna", "kind": "dicomweb", "url": "http://10.1.1.1/dw", "username": "u", "password": "hunter22"}'
    monkeypatch.setenv("PACSVLM_PRIOR_SOURCES", f"[{source}]")
    with pytest.raises(ValidationError, match="https only") as refused:
        Settings()
    assert "hunter22" not in str(refused.value)
