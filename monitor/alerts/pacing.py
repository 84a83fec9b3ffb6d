"""When a channel may send: quiet hours and digest times in the channel's time zone. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from monitor.config import DigestConfig, QuietHoursConfig


def in_quiet_hours(quiet: QuietHoursConfig | None, now: datetime, zone) -> bool:
    if quiet is None:
        return False
    local = now.astimezone(zone).time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end  # the quiet hours span midnight


def next_digest_time(digest: DigestConfig, after: datetime, zone) -> datetime:
    """The first digest time strictly after `after`: a multiple of `every` counted from
    local midnight, or the next of the fixed local times."""
    local = after.astimezone(zone)
    if digest.interval is not None:
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(seconds=digest.interval)
        elapsed = local - midnight
        candidate = midnight + step * (elapsed // step + 1)
        # A step that runs past midnight restarts the count there, as a person would expect.
        next_midnight = _local_midnight(local.date() + timedelta(days=1), zone)
        return min(candidate, next_midnight).astimezone(UTC)
    for day in range(2):
        date = local.date() + timedelta(days=day)
        for at in sorted(digest.at):
            candidate = datetime.combine(date, at, tzinfo=zone)
            if candidate > local:
                return candidate.astimezone(UTC)
    raise AssertionError("unreachable: a digest has at least one fixed time")


def _local_midnight(date, zone) -> datetime:
    return datetime.combine(date, time(0, 0), tzinfo=zone)
