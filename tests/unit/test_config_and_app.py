"""Settings from flags and env; the job-type registry."""

from __future__ import annotations

import pytest

from joblot.app import App, load_app
from joblot.config import Settings, load_client_settings, load_settings
from joblot.errors import ConfigError


def test_flags_override_env_which_overrides_defaults() -> None:
    env = {"JOBLOT_PORT": "9000", "JOBLOT_LEASE_SECONDS": "1.5", "JOBLOT_WORKERS": "3"}
    settings = load_settings({"port": 9100, "workers": None}, env)
    assert settings.port == 9100 and settings.workers == 3 and settings.lease_seconds == 1.5
    assert load_settings({}, {}).database_url == "sqlite:///joblot.db"


def test_bad_settings_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="JOBLOT_PORT='abc' is not a number"):
        load_settings({}, {"JOBLOT_PORT": "abc"})
    with pytest.raises(ConfigError, match="lease_seconds must be greater than 0"):
        Settings(lease_seconds=0)
    with pytest.raises(ConfigError, match="unsupported database URL"):
        Settings(database_url="mysql://x")


def test_settings_round_trip_through_child_environment() -> None:
    settings = Settings(port=8123, lease_seconds=2.5, app="x:y")
    assert load_settings({}, settings.to_env()) == settings


def test_client_settings_from_flags_then_env() -> None:
    env = {"JOBLOT_URL": "http://h:1/", "JOBLOT_TOKEN": "t"}
    assert load_client_settings(None, None, env).url == "http://h:1"
    assert load_client_settings("http://o:2", None, env).token == "t"
    assert load_client_settings(None, None, {}).token is None


def test_job_types_register_once_with_their_options() -> None:
    app = App()

    @app.job_type("tickets.update", action="update", max_failures=3)
    def handler(item: dict[str, object], ctx: object) -> dict[str, object]:
        return {}

    registered = app.get("tickets.update")
    assert registered is not None and registered.action == "update"
    assert registered.max_failures == 3 and not registered.is_async
    assert "tickets.update" in app and app.names() == ["tickets.update"]
    with pytest.raises(ConfigError, match="registered twice"):
        app.job_type("tickets.update")(handler)


def test_a_timeout_is_a_positive_number_of_seconds() -> None:
    app = App()

    def handler(item: dict[str, object], ctx: object) -> None:
        return None

    app.job_type("quick", timeout=2.5)(handler)
    registered = app.get("quick")
    assert registered is not None and registered.timeout == 2.5
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="timeout must be a number of seconds > 0"):
            app.job_type(f"bad{bad}", timeout=bad)(handler)


def test_load_app_explains_what_is_wrong() -> None:
    assert "demo.echo" in load_app("joblot.demo:app")
    with pytest.raises(ConfigError, match="MODULE:ATTR"):
        load_app("joblot.demo")
    with pytest.raises(ConfigError, match="cannot import"):
        load_app("no_such_module_xyz:app")
    with pytest.raises(ConfigError, match=r"is not a joblot\.App"):
        load_app("joblot.demo:make_demo_app")
