"""Settings from the environment, and bearer-token checks."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from serve_app.auth import check_bearer
from serve_app.settings import SettingsError, get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "WHISPER_API_KEY",
        "REQUIRE_AUTH",
        "ALLOWED_ORIGINS",
        "MAX_FILE_SIZE_MB",
        "DATABASE_URL",
        "USE_SQLITE",
        "DB_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/tmp")
    get_settings.cache_clear()


def test_auth_required_without_key_refuses_to_start() -> None:
    with pytest.raises(SettingsError) as err:
        get_settings()
    assert "set WHISPER_API_KEY" in str(err.value)


def test_seed_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_API_KEY", "k1,k2")
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://a.vercel.app, http://localhost:3000/")
    monkeypatch.setenv("USE_SQLITE", "true")
    monkeypatch.setenv("DB_PATH", "/tmp/x/whisper-jobs.db")
    s = get_settings()
    assert s.api_keys == ["k1", "k2"]
    assert s.allowed_origins == ["https://a.vercel.app", "http://localhost:3000"]
    assert str(s.database_file) == "/tmp/x/whisper-jobs.db"
    assert s.store_url == "sqlite:////tmp/x/whisper-jobs.db"
    assert s.max_file_bytes == 25_000_000
    assert "k1" not in repr(s)


def test_auth_can_be_turned_off_for_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_AUTH", "false")
    assert get_settings().require_auth is False


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_API_KEY", "k")
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "lots")
    with pytest.raises(SettingsError, match="MAX_FILE_SIZE_MB"):
        get_settings()


def test_the_job_store_is_chosen_by_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.store import shareable

    monkeypatch.setenv("WHISPER_API_KEY", "k")
    assert get_settings().store_url == "sqlite:////tmp/data/whisper-jobs.db"
    monkeypatch.setenv("USE_SQLITE", "false")  # the seed's memory mode
    get_settings.cache_clear()
    memory = get_settings().store_url
    assert memory == "sqlite://"
    # Every gateway replica opens the same store: memory becomes a fresh file per start,
    # a relative path is pinned where the server started.
    assert shareable(memory).startswith("sqlite:////") and shareable(memory) != shareable(memory)
    assert shareable("sqlite:///rel/jobs.db") == "sqlite:////tmp/rel/jobs.db"
    monkeypatch.setenv("DATABASE_URL", "sqlite:////srv/jobs.db")
    get_settings.cache_clear()
    assert get_settings().store_url == "sqlite:////srv/jobs.db"
    monkeypatch.setenv("DATABASE_URL", "mysql://db/jobs")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"DATABASE_URL.*mysql"):
        get_settings()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token k1", "Bearer k3", "k1"])
def test_bad_headers_are_401(header: str | None) -> None:
    with pytest.raises(HTTPException) as err:
        check_bearer(header, ["k1", "k2"])
    assert err.value.status_code == 401


@pytest.mark.parametrize("header", ["Bearer k1", "bearer k2", "Bearer  k1 "])
def test_good_headers_pass(header: str) -> None:
    check_bearer(header, ["k1", "k2"])


def test_the_builder_places_replicas_by_custom_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/cluster.yaml: gateways on the nodes holding ``gateway``, Whisper replicas on
    those holding ``transcriber``; serve_config.yaml asks for none."""
    from serve_app.builder import build_app

    monkeypatch.setenv("WHISPER_API_KEY", "k1")
    app = build_app({"gateway_resources": {"gateway": 1}, "transcriber_resources": {"t": 2}})
    gateway = app._bound_deployment
    transcriber = gateway.init_args[1]._bound_deployment
    assert gateway.ray_actor_options == {"num_cpus": 0.25, "resources": {"gateway": 1.0}}
    assert transcriber.ray_actor_options["resources"] == {"t": 2.0}
    default = build_app({})._bound_deployment
    assert "resources" not in default.ray_actor_options
    assert default.init_args[1]._bound_deployment.ray_actor_options["resources"] == {}
    with pytest.raises(ValueError, match="gateway_resource"):
        build_app({"gateway_resource": {"gateway": 1}})  # a misspelt arg is refused
