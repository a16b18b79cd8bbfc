from __future__ import annotations

from pathlib import Path

import pytest

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, Settings, SettingsError


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"CHANGECAST_DATA_DIR": str(tmp_path), **values}


def test_settings_defaults_are_embedded_demo(tmp_path: Path) -> None:
    settings = Settings.from_env(env(tmp_path))
    assert settings.embedded
    assert settings.demo
    assert (settings.host, settings.port, settings.db_name) == ("127.0.0.1", 8000, "changecast")
    assert settings.admin_password == DEFAULT_ADMIN_PASSWORD


def test_settings_uri_turns_demo_off_and_requires_admin_password(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CHANGECAST_ADMIN_PASSWORD"):
        Settings.from_env(env(tmp_path, MONGODB_URI="mongodb://db:27017/?replicaSet=rs0"))
    settings = Settings.from_env(env(
        tmp_path, MONGODB_URI="mongodb://db:27017", CHANGECAST_ADMIN_PASSWORD="s3cret-pass"
    ))
    assert not settings.embedded and not settings.demo
    assert settings.demo_password is None


@pytest.mark.parametrize(("name", "value"), [
    ("CHANGECAST_PORT", "eighty"),
    ("CHANGECAST_PORT", "70000"),
    ("CHANGECAST_DEMO", "maybe"),
    ("MONGODB_URI", "postgres://x"),
    ("CHANGECAST_DB", "bad name!"),
    ("CHANGECAST_LOG_LEVEL", "LOUD"),
    ("CHANGECAST_PAYMENT_SUCCESS_RATE", "1.5"),
    ("CHANGECAST_PAYMENT_LATENCY_MS", "800-100"),
    ("CHANGECAST_HEARTBEAT_S", "0"),
    ("CHANGECAST_HEARTBEAT_S", "often"),
    ("CHANGECAST_LOOP", "trio"),
])
def test_settings_invalid_value_names_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env(tmp_path, **{name: value}))


def test_settings_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = Settings.from_env(env(tmp_path)).secret_key
    second = Settings.from_env(env(tmp_path)).secret_key
    assert len(first) >= 32
    assert first == second
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_settings_explicit_secret_key_wins(tmp_path: Path) -> None:
    settings = Settings.from_env(env(tmp_path, CHANGECAST_SECRET_KEY="x" * 40))
    assert settings.secret_key == "x" * 40
    assert not (tmp_path / "secret_key").exists()


def test_settings_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SettingsError, match="CHANGECAST_DATA_DIR"):
        Settings.from_env({"CHANGECAST_DATA_DIR": str(blocker / "sub")})


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings.from_env(env(tmp_path))
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
