"""Settings from an explicit environment mapping (SPEC §3). Never reads the real environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.errors import ConfigError
from batch.settings import Secret, Settings, normalise_database_url


def test_defaults_use_an_embedded_sqlite_file_in_the_given_directory(tmp_path: Path) -> None:
    settings = Settings.from_env(env={}, cwd=tmp_path)
    assert settings.embedded_database == tmp_path / "sigmasight.db"
    assert settings.database_url == f"sqlite:///{tmp_path / 'sigmasight.db'}"
    assert settings.market_data_provider == "sample"
    assert settings.risk_free_rate == 0.04
    assert settings.batch_timeout_seconds == 3600
    assert settings.max_retry_attempts == 3
    assert isinstance(settings.max_retry_attempts, int)
    assert settings.log_level == "INFO"
    assert settings.fmp_api_key is None and settings.polygon_api_key is None
    assert settings.sentry_dsn is None


def test_empty_strings_mean_unset(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "", "RISK_FREE_RATE": " ", "MAX_RETRY_ATTEMPTS": "", "MARKET_DATA_PROVIDER": "",
           "BATCH_TIMEOUT_SECONDS": ""}
    settings = Settings.from_env(env=env, cwd=tmp_path)
    assert settings.embedded_database == tmp_path / "sigmasight.db"
    assert (settings.risk_free_rate, settings.max_retry_attempts, settings.batch_timeout_seconds) == (0.04, 3, 3600)
    assert settings.market_data_provider == "sample"


def test_log_format_defaults_to_json_off_a_terminal_and_console_on_one(tmp_path, monkeypatch) -> None:
    class FakeStdout:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stdout", FakeStdout(False))
    assert Settings.from_env(env={}, cwd=tmp_path).log_format == "json"
    monkeypatch.setattr("sys.stdout", FakeStdout(True))
    assert Settings.from_env(env={}, cwd=tmp_path).log_format == "console"
    # An explicit LOG_FORMAT wins over the terminal test.
    assert Settings.from_env(env={"LOG_FORMAT": "json"}, cwd=tmp_path).log_format == "json"


def test_explicit_values_are_read(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "sqlite:////var/data/x.db", "RISK_FREE_RATE": "0.0525", "MAX_RETRY_ATTEMPTS": "5",
           "BATCH_TIMEOUT_SECONDS": "1800", "LOG_LEVEL": "debug", "LOG_FORMAT": "console",
           "FMP_API_KEY": "k1", "POLYGON_API_KEY": "k2", "MARKET_DATA_PROVIDER": "FMP",
           "FMP_REQUESTS_PER_DAY": "750"}
    settings = Settings.from_env(env=env, cwd=tmp_path)
    assert settings.database_url == "sqlite:////var/data/x.db"
    assert settings.embedded_database is None
    assert settings.risk_free_rate == 0.0525
    assert settings.max_retry_attempts == 5
    assert settings.batch_timeout_seconds == 1800
    assert settings.log_level == "DEBUG" and settings.log_format == "console"
    assert settings.market_data_provider == "fmp"
    assert (settings.fmp_api_key.reveal(), settings.polygon_api_key.reveal()) == ("k1", "k2")
    assert settings.fmp_requests_per_day == 750
    assert Settings.from_env(env={}, cwd=tmp_path).fmp_requests_per_day == 250  # FMP's free plan


@pytest.mark.parametrize("raw, expected", [
    ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql://u:p@h:6543/db?sslmode=require", "postgresql+psycopg://u:p@h:6543/db?sslmode=require"),
    ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql+psycopg2://u:p@h:6543/db", "postgresql+psycopg://u:p@h:6543/db"),
    ("sqlite:///relative.db", "sqlite:///relative.db"),
], ids=["postgres-scheme", "pg-scheme", "pg-scheme-port-query", "already-psycopg", "psycopg2-form",
        "file-url-untouched"])
def test_database_urls_are_normalised_to_psycopg3(raw: str, expected: str, tmp_path: Path) -> None:
    assert normalise_database_url(raw) == expected
    settings = Settings.from_env(env={"DATABASE_URL": raw}, cwd=tmp_path)
    assert settings.database_url == expected
    assert settings.embedded_database is None


@pytest.mark.parametrize("name, value", [
    ("RISK_FREE_RATE", "abc"),
    ("RISK_FREE_RATE", "inf"),
    ("RISK_FREE_RATE", "5"),  # 500%: outside the plausible range
    ("MAX_RETRY_ATTEMPTS", "0"),
    ("MAX_RETRY_ATTEMPTS", "-1"),
    ("MAX_RETRY_ATTEMPTS", "2.5"),
    ("MARKET_DATA_PROVIDER", "bloomberg"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("BATCH_TIMEOUT_SECONDS", "nan"),
    ("BATCH_TIMEOUT_SECONDS", "-10"),
    ("DATABASE_URL", "not a url"),
    ("FMP_REQUESTS_PER_DAY", "0"),
    ("FMP_REQUESTS_PER_DAY", "2.5"),
])
def test_bad_values_raise_a_config_error_naming_the_variable(name: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env={name: value}, cwd=tmp_path)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value)


def test_safe_database_url_hides_the_password(tmp_path: Path) -> None:
    password = "s3cretPassw0rd"
    settings = Settings.from_env(env={"DATABASE_URL": f"postgres://alice:{password}@db.internal:5432/risk"},
                                 cwd=tmp_path)
    assert password in settings.database_url  # the real URL keeps it, for connecting
    safe = settings.safe_database_url
    assert password not in safe
    assert "alice" in safe and "db.internal" in safe and "risk" in safe


def test_safe_database_url_hides_a_percent_encoded_password(tmp_path: Path) -> None:
    settings = Settings.from_env(env={"DATABASE_URL": "postgresql://bob:p%40ss%2Fw0rd@h/db"}, cwd=tmp_path)
    safe = settings.safe_database_url
    assert "p%40ss%2Fw0rd" not in safe and "p@ss/w0rd" not in safe and "w0rd" not in safe


def test_from_env_does_not_read_the_process_environment_when_given_a_mapping(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RISK_FREE_RATE", "0.09")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x:y@h/db")
    settings = Settings.from_env(env={}, cwd=tmp_path)
    assert settings.risk_free_rate == 0.04
    assert settings.embedded_database == tmp_path / "sigmasight.db"


@pytest.mark.parametrize("raw", ["postgres://u:p@h:abc/db", "postgresql://u:p@h:abc/db"],
                         ids=["postgres-scheme", "pg-scheme"])
def test_malformed_postgres_url_is_a_config_error(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env(env={"DATABASE_URL": raw}, cwd=tmp_path)


@pytest.mark.parametrize("raw, scheme", [
    ("mysql://u:pw-SECRET@h/db", "mysql://"),
    ("postgresql+asyncpg://u:pw-SECRET@h/db", "postgresql+asyncpg://"),
    ("postgresql+pg8000://u:pw-SECRET@h/db", "postgresql+pg8000://"),
    ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite://"),
    ("oracle://u:pw-SECRET@h/db", "oracle://"),
    ("http://u:pw-SECRET@h/db", "http://"),
    ("sqlite://somehost/x.db", "somehost"),
])
def test_unsupported_database_urls_are_one_config_error_naming_the_scheme(raw: str, scheme: str,
                                                                         tmp_path: Path) -> None:
    """Issue #10 item 25: other dialects and drivers (which crashed on a missing DBAPI module at
    connect time) are rejected up front, naming the scheme and the supported forms, never the
    password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env={"DATABASE_URL": raw}, cwd=tmp_path)
    message = str(info.value)
    assert message.startswith("DATABASE_URL") and scheme in message and "sqlite:///" in message
    assert "\n" not in message and "SECRET" not in message


def test_the_settings_never_show_a_secret(tmp_path: Path) -> None:
    """repr, str and f-strings of the settings (what an error report or a log line would carry)
    show the database password masked and every credential as `***`; the clients get the real
    values through `reveal()` and the unmasked URL."""
    env = {"DATABASE_URL": "postgres://batch:pa55-w0rd@db.example:5432/risk", "FMP_API_KEY": "fmp-key-123",
           "POLYGON_API_KEY": "poly-key-456", "SENTRY_DSN": "https://dsn-key-789@o1.ingest.sentry.io/42"}
    settings = Settings.from_env(env=env, cwd=tmp_path)
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings.fmp_api_key}",
                  repr(settings.sentry_dsn), str([settings])):
        for secret in ("pa55-w0rd", "fmp-key-123", "poly-key-456", "dsn-key-789"):
            assert secret not in shown, (secret, shown)
    assert "postgresql+psycopg://batch:***@db.example:5432/risk" in repr(settings)
    assert "fmp_api_key=Secret('***')" in repr(settings)
    assert settings.database_url == "postgresql+psycopg://batch:pa55-w0rd@db.example:5432/risk"
    assert (settings.fmp_api_key.reveal(), settings.sentry_dsn.reveal()) == (
        "fmp-key-123", "https://dsn-key-789@o1.ingest.sentry.io/42")
    assert Secret("x") == Secret("x") and Secret("x") != Secret("y")
