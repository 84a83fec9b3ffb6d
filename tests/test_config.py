from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config, load_secrets, parse_config

MINIMAL = {
    "feeds": [{"name": "irna", "url": "https://www.irna.ir/rss", "interval": "5m"}],
    "watches": [{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["log"]}],
    "channels": [{"name": "log", "type": "log"}],
}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return info.value.problems


def test_shipped_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[1] / "config" / "monitor.yaml", env={})
    assert {"irna", "isna", "mehr", "tasnim", "fars", "bbc-persian"} <= {
        f.name for f in config.feeds}
    assert "oic" in {w.name for w in config.watches}
    assert any(c.type == "log" for c in config.channels)


def test_durations_accept_seconds_and_units() -> None:
    config = parse_config(MINIMAL, env={})
    assert config.feeds[0].interval == 300
    data = {**MINIMAL, "feeds": [{"name": "x", "url": "http://127.0.0.1/x", "interval": 1}]}
    assert parse_config(data, env={}).feeds[0].interval == 1


@pytest.mark.parametrize(("change", "expected"), [
    ({"feeds": [{"name": "a", "url": "http://x/a"}, {"name": "b", "url": "ftp://x/b"}]},
     "feeds[1].url: only http and https feeds are allowed"),
    ({"feeds": [{"name": "a", "url": "http://x/a", "interval": "soon"}]},
     "feeds[0].interval: expected a duration"),
    ({"feeds": [{"name": "a", "url": "http://x/a", "intervl": 5}]},
     "feeds[0].intervl: unknown key"),
    ({"watches": [{"name": "w", "any": ["x"], "channels": ["nope"]}]},
     "watches[0].channels[0]: no channel named 'nope'"),
    ({"watches": [{"name": "w", "any": ["/(unclosed/"]}]}, "watches[0].any[0]: invalid regular"),
    ({"watches": [{"name": "w", "channels": []}]}, "watches[0]: a watch needs at least one term"),
    ({"channels": [{"name": "log", "type": "pager"}]}, "channels[0]"),
    ({"channels": [{"name": "m", "type": "email", "host": "h", "from": "a@b"}]},
     "channels[0].to: Field required"),
    ({"feeds": [{"name": "a", "url": "http://x/a"}, {"name": "a", "url": "http://x/b"}]},
     "feeds[1].name: duplicate name 'a'"),
])
def test_errors_name_the_yaml_path(change: dict, expected: str) -> None:
    problems = _problems({**MINIMAL, **change})
    assert any(p.startswith(expected) for p in problems), problems


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("feeds:\n  - name: a\n   url: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path, env={})


def test_database_url_env_override() -> None:
    config = parse_config(MINIMAL, env={"MONITOR_DATABASE_URL": "sqlite:////tmp/other.db"})
    assert config.database.url == "sqlite:////tmp/other.db"


def test_secrets_come_from_named_env_and_never_show() -> None:
    data = {**MINIMAL, "channels": [
        {"name": "log", "type": "log"},
        {"name": "hook", "type": "webhook", "url": "http://127.0.0.1/h", "secret_env": "HOOK_S"},
    ]}
    config = parse_config(data, env={})
    secrets = load_secrets(config, env={"HOOK_S": "s3cret-value", "OTHER": "x"})
    assert secrets.get("HOOK_S") == "s3cret-value"
    assert secrets.get("OTHER") is None  # only variables the YAML names are read
    assert "s3cret-value" not in repr(secrets) + repr(config)


def test_stories_section_and_alert_on_update() -> None:
    config = parse_config({**MINIMAL, "stories": {"window": "2d", "threshold": 0.8},
                           "watches": [{**MINIMAL["watches"][0], "alert_on_update": True}]},
                          env={})
    assert config.stories.window == 2 * 86400
    assert config.stories.threshold == 0.8
    assert config.watches[0].alert_on_update is True
    assert parse_config(MINIMAL, env={}).stories.window == 3 * 86400
    problems = _problems({**MINIMAL, "stories": {"threshold": 1.5, "windw": "1d"}})
    assert any(p.startswith("stories.threshold:") for p in problems)
    assert "stories.windw: unknown key" in problems
