"""The deployment files: docker-compose.yml, its config, the Dockerfile, the systemd unit.

No Docker engine is needed: the files are loaded and checked for what `docker compose up`
relies on (CI machines have no engine; the image build is checked where one exists).
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import yaml

from monitor.cli import EXIT_CONFIG
from monitor.config import EmailChannelConfig, SchedulerConfig, load_config, split_listen
from tests.conftest import ROOT

# The compose-spec keys this project may use; a typo such as `depend_on` fails here.
TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {"build", "image", "user", "command", "entrypoint", "environment", "env_file",
                "volumes", "ports", "depends_on", "healthcheck", "restart",
                "stop_grace_period", "networks", "read_only", "tmpfs"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_services_volumes_and_healthy_postgres_dependency() -> None:
    compose = _compose()
    assert set(compose) <= TOP_LEVEL
    services = compose["services"]
    assert set(services) == {"monitor", "postgres", "mailpit"}
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"

    monitor = services["monitor"]
    assert monitor["build"] == "."
    assert monitor["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert monitor["user"].split(":")[0] not in ("0", "root")
    assert "healthz" in " ".join(monitor["healthcheck"]["test"])
    mounts = {v.split(":")[1]: v for v in monitor["volumes"]}
    assert mounts["/app/config"] == "./config:/app/config:ro"
    assert mounts["/app/data"].split(":")[0] in compose["volumes"]
    assert monitor["environment"]["MONITOR_DATABASE_URL"].startswith(
        "postgresql+psycopg://monitor:${POSTGRES_PASSWORD")

    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data = next(v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert data.split(":")[0] in compose["volumes"]
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")


def test_every_compose_variable_is_in_env_example_and_no_secret_is_written_in() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert used and used <= documented
    postgres_env = _compose()["services"]["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"].startswith("${")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_compose_config_mails_alerts_to_mailpit() -> None:
    compose = _compose()
    monitor = compose["services"]["monitor"]
    config_path = monitor["environment"]["MONITOR_CONFIG"]
    assert config_path.startswith("/app/config/")
    config = load_config(ROOT / "config" / Path(config_path).name, env={})
    mail = [c for c in config.channels if isinstance(c, EmailChannelConfig)]
    assert [(c.host, c.port) for c in mail] == [("mailpit", 1025)]
    assert not mail[0].username_env  # Mailpit needs no login: the channel is active at once
    assert all(mail[0].name in w.channels for w in config.watches)
    assert config.http.listen is not None
    _, port = split_listen(config.http.listen)
    assert f"127.0.0.1:{port}:{port}" in monitor["ports"]
    assert config.scheduler.pid_file and config.scheduler.pid_file.startswith("/app/data/")


def test_dockerfile_runs_as_a_non_root_user_and_copies_what_exists() -> None:
    lines = [line.strip() for line in
             (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "EXPOSE 8787" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert 'ENTRYPOINT ["monitor"]' in lines


def test_systemd_unit_reloads_with_sighup_and_waits_for_a_clean_stop() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "monitor.service", encoding="utf-8")
    service = unit["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].split()[-1] == "run"
    assert service["User"] not in ("root", "0")
    assert float(service["TimeoutStopSec"]) > SchedulerConfig().shutdown_grace
    assert service["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert unit["Install"]["WantedBy"] == "multi-user.target"
