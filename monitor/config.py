"""The YAML configuration: parsed once into typed objects and passed down.

This is the only module that reads the config file or the environment. Every error the user
can act on is a `ConfigError` whose lines name the YAML path (``feeds[2].url: ...``).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.stories import DEFAULT_THRESHOLD

DEFAULT_CONFIG_PATH = "config/monitor.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ConfigError(Exception):
    """The configuration is invalid; each line names the YAML path of one problem."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid configuration\n  " + "\n  ".join(problems))


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"5m"``, ``"90s"``, ``"1.5h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300 or '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 300 or '5m', got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def parse_delay(value: Any) -> float:
    """A duration that may also be zero (a spacing or a jitter that is switched off)."""
    if value in (0, "0"):
        return 0.0
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Delay = Annotated[float, BeforeValidator(parse_delay)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a watch must not silently widen or narrow it.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///data/monitor.db"
    lease_seconds: Duration = 120.0


class FetchConfig(_Strict):
    """HTTP limits for feed fetching; every timeout is configurable so fault tests stay fast."""

    connect_timeout: Duration = 5.0
    read_timeout: Duration = 10.0
    total_timeout: Duration = 30.0
    max_body_bytes: int = Field(15 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)
    concurrency: int = Field(32, ge=1)
    per_host_concurrency: int = Field(2, ge=1)  # requests in flight to one host, per daemon
    per_host_spacing: Delay = 0.5  # seconds between two requests to one host, per daemon
    user_agent: str = "monitor/0.1 (+https://github.com/monitor-news/monitor)"


class ParseConfig(_Strict):
    """Where a changed feed's document is parsed and its new entries prepared (keys,
    language, matches, sketches): in worker processes, which use the machine's other cores
    and keep a document that crashes or hangs the parser away from the daemon, or (0) in
    the daemon's own threads, which saves a worker's memory (about 72 MB, and 13 MB for
    multiprocessing's resource tracker)."""

    processes: int = Field(1, ge=0)
    timeout: Duration = 60.0  # in a worker, a document that takes longer is given up


class NetworkConfig(_Strict):
    """Where feeds and webhooks may connect. Non-public addresses are refused by default."""

    allow_private_networks: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)  # host names, IPs or CIDRs

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, items: list[str]) -> list[str]:
        import ipaddress

        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?\.?", item):
                    raise ValueError(
                        f"{item!r} is neither a host name nor an IP address or CIDR "
                        "such as 10.0.0.0/8") from None
        return items


class ScheduleConfig(_Strict):
    """How a feed's next check is chosen beyond its configured interval."""

    jitter: float = Field(0.1, ge=0, le=0.5)  # +-10 % so feeds do not fire in lockstep
    feed_hints: bool = True  # honour RSS <ttl>, sy:updatePeriod, Cache-Control max-age
    max_hint: Duration = 3600.0  # ... but never wait longer than this because of them
    adaptive: bool = False  # slow down quiet feeds from their observed publishing rate
    adaptive_max: Duration = 3600.0
    max_backoff: Duration = 86400.0  # error backoff and Retry-After are clamped to this


class SchedulerConfig(_Strict):
    tick: Duration = 1.0
    delivery_interval: Duration = 5.0
    shutdown_grace: Duration = 8.0
    # Where the daemon writes its pid for `monitor reload`; default: next to the SQLite
    # database, or data/monitor.pid for PostgreSQL.
    pid_file: str | None = None


class HttpConfig(_Strict):
    """The daemon's /healthz and /metrics endpoint; `listen: null` turns it off."""

    listen: str | None = "127.0.0.1:8787"
    # /healthz answers 503 when no poll cycle has completed for this long.
    max_cycle_age: Duration = 120.0

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            split_listen(listen)
        return listen


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"`` or ``"[::1]:8787"`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port such as '127.0.0.1:8787', got {listen!r}")
    return host, int(port)


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


OptionalDuration = Annotated[float | None, BeforeValidator(_optional_duration)]


class RetentionConfig(_Strict):
    """How long stored rows are kept; null keeps them for ever. Baseline articles, alerts
    still waiting for delivery and what deduplication needs are always kept."""

    articles: OptionalDuration = 180 * 86400.0
    delivered_alerts: OptionalDuration = 90 * 86400.0
    interval: Duration = 86400.0  # how often the daemon prunes


class FeedConfig(_Strict):
    name: str = Field(min_length=1)
    url: str
    interval: Duration = 300.0
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            raise ValueError(f"only http and https feeds are allowed, got {url!r}")
        return url


Language = Literal["fa", "ar", "en", "fr"]  # what `monitor.text.normalize` can tell apart


class WatchConfig(_Strict):
    """A watch rule. Term syntax (phrases, ``word+``, ``+word``, ``/regex/``) is documented
    and validated in `monitor.text.match`."""

    name: str = Field(min_length=1)
    any: list[str] = Field(default_factory=list)
    all: list[str] = Field(default_factory=list)
    not_: list[str] = Field(default_factory=list, alias="not")
    fields: list[Literal["title", "summary", "content"]] = Field(
        default_factory=lambda: ["title", "summary", "content"]
    )
    feeds: list[str] = Field(default_factory=list)
    languages: list[Language] = Field(default_factory=list)
    case_sensitive: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    # A story alerts once per watch; with this, a later copy that matches a term of this
    # watch the story's earlier articles did not also alerts, as kind "update".
    alert_on_update: bool = False

    @model_validator(mode="after")
    def _has_positive_terms(self) -> WatchConfig:
        if not self.any and not self.all:
            raise ValueError("a watch needs at least one term in 'any' or 'all'")
        return self


_HEADER_BREAK = re.compile(r"[\r\n\x00]")
_CLOCK_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock_time(value: Any) -> time:
    """A local time of day written ``"HH:MM"``."""
    if isinstance(value, time):
        return value
    match = _CLOCK_TIME.match(str(value).strip()) if isinstance(value, str | int) else None
    if not match:
        raise ValueError(f"expected a time of day such as '07:30', got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


ClockTime = Annotated[time, BeforeValidator(parse_clock_time)]


class RetryConfig(_Strict):
    """When a failed delivery is tried again: each of `delays` once, then every `then`,
    until `give_up_after` has passed since it was first sendable; then it is dead."""

    delays: list[Duration] = Field(default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000])
    then: Duration = 3600.0
    give_up_after: Duration = 3 * 86400.0


class EmailRetryConfig(RetryConfig):
    # RFC 5321 practice for 4xx answers, shortened to a day for news that goes stale.
    delays: list[Duration] = Field(default_factory=lambda: [60, 300])
    then: Duration = 1800.0
    give_up_after: Duration = 86400.0


class DigestConfig(_Strict):
    """When a digest goes out: every N (aligned to local midnight) or at fixed local times."""

    every: Duration | None = None
    at: list[ClockTime] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_schedule(self) -> DigestConfig:
        if self.every is not None and self.at:
            raise ValueError("choose either 'every' or 'at', not both")
        return self

    @property
    def interval(self) -> float | None:
        """Seconds between digests when no fixed times are given (default 30 min)."""
        return None if self.at else (self.every or 1800.0)


class QuietHoursConfig(_Strict):
    """Local times between which alerts are held, then sent as one digest."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursConfig:
        if self.start == self.end:
            raise ValueError("start and end are the same time")
        return self


class _ChannelBase(_Strict):
    name: str = Field(min_length=1)
    enabled: bool = True
    mode: Literal["immediate", "digest"] = "immediate"
    digest: DigestConfig = Field(default_factory=DigestConfig)
    rate_limit: int | None = Field(None, ge=1)  # messages per hour; the rest go in a digest
    quiet_hours: QuietHoursConfig | None = None
    timezone: str = "Asia/Tehran"  # for quiet hours and digest times
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                             "'Asia/Tehran')") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class LogChannelConfig(_ChannelBase):
    type: Literal["log"]


class WebhookChannelConfig(_ChannelBase):
    type: Literal["webhook"]
    url: str | None = None
    url_env: str | None = None  # for URLs that embed a token (Slack, Discord, Telegram)
    format: Literal["json", "slack", "discord", "telegram"] = "json"
    chat_id: str | None = None  # telegram only
    secret_env: str | None = None
    timeout: Duration = 15.0  # for the whole attempt: connect, send, and the full answer
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"a webhook url must be http or https, got {url!r}")
        return url

    @model_validator(mode="after")
    def _one_url(self) -> WebhookChannelConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of 'url' and 'url_env'")
        if self.format == "telegram" and not self.chat_id:
            raise ValueError("format telegram needs 'chat_id'")
        return self


class EmailChannelConfig(_ChannelBase):
    type: Literal["email"]
    host: str
    port: int = Field(587, gt=0, lt=65536)
    starttls: bool = False
    ssl: bool = False
    username_env: str | None = None
    password_env: str | None = None
    # Credentials over an unencrypted connection only when the operator says so (a relay
    # on localhost); otherwise configuring a login without TLS is an error.
    allow_plaintext_auth: bool = False
    # A relay whose certificate an internal authority signed: trust that authority's PEM
    # file for this channel instead of the system's store (never "don't verify").
    ca_file: str | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout: Duration = 30.0
    retry: RetryConfig = Field(default_factory=EmailRetryConfig)

    @model_validator(mode="after")
    def _safe_transport(self) -> EmailChannelConfig:
        if self.starttls and self.ssl:
            raise ValueError("choose either starttls or ssl, not both")
        if ((self.username_env or self.password_env) and not (self.starttls or self.ssl)
                and not self.allow_plaintext_auth):
            raise ValueError("a login over plain SMTP would send the password unencrypted: "
                             "set starttls: true or ssl: true (or allow_plaintext_auth: true "
                             "for a trusted local relay)")
        if self.ca_file is not None:
            if not (self.starttls or self.ssl):
                raise ValueError("ca_file is for TLS: set starttls: true or ssl: true")
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {self.ca_file!r}: cannot load certificates "
                                 f"({getattr(exc, 'strerror', None) or exc})") from None
        for address in (self.from_, *self.to):
            if _HEADER_BREAK.search(address):
                raise ValueError(f"address {address!r} contains a line break")
        return self


ChannelConfig = Annotated[
    LogChannelConfig | WebhookChannelConfig | EmailChannelConfig, Field(discriminator="type")
]


class StoriesConfig(_Strict):
    """How copies of one story are grouped (`monitor.stories`)."""

    # A new article joins a story only through an article stored within this window
    # (baseline stories are always eligible).
    window: Duration = 3 * 86400.0
    # The share of the shorter lead's shingles the other must contain; the default was
    # chosen by measurement (README, "Stories").
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1)


class SeedConfig(_Strict):
    path: str = "seed_data"


class Config(_Strict):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    stories: StoriesConfig = Field(default_factory=StoriesConfig)
    feeds: list[FeedConfig] = Field(default_factory=list)
    watches: list[WatchConfig] = Field(default_factory=list)
    channels: list[ChannelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems: list[str] = []
        for section, items in (("feeds", self.feeds), ("watches", self.watches),
                               ("channels", self.channels)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.name in seen:
                    problems.append(f"{section}[{i}].name: duplicate name {item.name!r}")
                seen.add(item.name)
        channel_names = {c.name for c in self.channels}
        for i, watch in enumerate(self.watches):
            for j, channel in enumerate(watch.channels):
                if channel not in channel_names:
                    problems.append(
                        f"watches[{i}].channels[{j}]: no channel named {channel!r}"
                    )
        kept = self.retention.articles
        if kept is not None and kept < self.stories.window:
            # Copies join a story through articles inside the window: pruning them sooner
            # would let a copy alert as a new story.
            problems.append(f"retention.articles: must be at least stories.window "
                            f"({self.stories.window / 86400:g} days), got {kept / 86400:g} days")
        if problems:
            raise ConfigError(problems)
        return self

    def channel(self, name: str) -> LogChannelConfig | WebhookChannelConfig | EmailChannelConfig:
        return next(c for c in self.channels if c.name == name)


@dataclass(frozen=True)
class Secrets:
    """Secret values looked up from the environment variables the YAML names.

    Kept apart from `Config` so that dumping or logging the config can never print one.
    """

    values: Mapping[str, str]

    def get(self, env_name: str | None) -> str | None:
        return self.values.get(env_name) if env_name else None

    def __repr__(self) -> str:  # never show the values
        return f"Secrets({sorted(self.values)})"


def channel_missing_secrets(channel: ChannelConfig, secrets: Secrets) -> list[str]:
    """The env var names a channel needs but the environment does not set.

    Channels that name secrets are present in the shipped config but only active once their
    variables are set, so a new user is not greeted by failing deliveries.
    """
    names: list[str | None] = []
    if isinstance(channel, WebhookChannelConfig):
        names = [channel.secret_env, channel.url_env]
    elif isinstance(channel, EmailChannelConfig):
        names = [channel.username_env, channel.password_env]
    return [n for n in names if n and secrets.get(n) is None]


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("log", "webhook", "email") and out.endswith("]"):
            continue  # pydantic puts the union tag in the location; the user never wrote it
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        path = _yaml_path(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{path}: {message}")
    return problems


def parse_config(data: Any, source: str = "", env: Mapping[str, str] | None = None) -> Config:
    """Validate already-loaded YAML data. `env` supplies overrides such as MONITOR_DATABASE_URL."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of sections"], source)
    if env.get("MONITOR_DATABASE_URL"):
        data = {**data, "database": {**(data.get("database") or {}),
                                     "url": env["MONITOR_DATABASE_URL"]}}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc), source) from None
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    # Imported here: the matcher validates term syntax (regexes), and config must not depend
    # on it at import time.
    from monitor.text.match import validate_watches

    problems = validate_watches(config.watches)
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"],
                          str(path)) from None
    return parse_config(data, str(path), env)


def load_secrets(config: Config, env: Mapping[str, str] | None = None) -> Secrets:
    env = os.environ if env is None else env
    wanted: set[str] = set()
    for channel in config.channels:
        if isinstance(channel, WebhookChannelConfig):
            wanted.update(n for n in (channel.secret_env, channel.url_env) if n)
        elif isinstance(channel, EmailChannelConfig):
            wanted.update(n for n in (channel.username_env, channel.password_env) if n)
    return Secrets({name: env[name] for name in wanted if name in env})


def pid_file_path(config: Config) -> Path:
    """Where the daemon writes its pid and `monitor reload` looks for it."""
    if config.scheduler.pid_file:
        return Path(config.scheduler.pid_file)
    url = config.database.url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0]).parent / "monitor.pid"
    return Path("data/monitor.pid")


def secret_values(config: Config, secrets: Secrets) -> list[str]:
    """Every secret value the process knows: the channels' and the database password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    values = list(secrets.values.values())
    try:
        password = make_url(config.database.url).password
    except ArgumentError:
        password = None
    if password:
        values.append(str(password))
    return values


def load_fault_pauses(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Test hook for crash tests: ``MONITOR_FAULT_PAUSE="after_claim=30"`` makes delivery
    sleep at that point so a test can kill the daemon there. Unset in normal use."""
    env = os.environ if env is None else env
    pauses: dict[str, float] = {}
    for part in (env.get("MONITOR_FAULT_PAUSE") or "").split(","):
        name, _, seconds = part.partition("=")
        if name.strip() and seconds.strip():
            pauses[name.strip()] = float(seconds)
    return pauses
