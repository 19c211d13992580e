"""Cron schedules of the batch scheduler (pure: no I/O, no clock).

A schedule is a standard five-field cron expression (minute hour day-of-month month
day-of-week, as in crontab(5); ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and
``@yearly`` are accepted) evaluated in an IANA time zone (UTC by default). Seconds fields and
croniter's non-standard ``H`` (hashed) and ``R`` (random) values are refused: two schedulers
must compute the very same ticks, because a tick's job id is derived from its time.

Ticks are instants, always returned as timezone-aware UTC datetimes. Around daylight-saving
changes the rule of Vixie cron / cronie applies:

* a schedule whose minute or hour field starts with ``*`` (e.g. ``0 * * * *``, ``*/20 * * * *``)
  follows real time: wall-clock times skipped by a spring-forward change do not fire, and
  times repeated by a fall-back change fire for each occurrence;
* any other schedule (e.g. ``30 2 * * *``) fires once per matching wall-clock time: a time
  in the skipped hour fires at the first instant after the change (03:00), and a repeated
  time fires only at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from croniter import (  # type: ignore[import-untyped, unused-ignore]
    CroniterBadDateError,
    CroniterError,
    croniter,
)

from cur_ray.errors import ConfigurationError

MAX_CRON_LENGTH = 128  # the widths of finops_batch_schedules.cron and .timezone
MAX_TIMEZONE_LENGTH = 64
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Wider than any daylight-saving shift (at most 2 h): how far around a moment the search
# looks for wall-clock times whose instants could still come next.
_DST_MARGIN = dt.timedelta(hours=3)
_REFERENCE = dt.datetime(2001, 1, 1)  # naive on purpose: croniter then steps in wall-clock time


def _problem(expression: str) -> str | None:
    """Why ``expression`` is not a usable schedule, or None when it is."""
    if not expression:
        return "it is empty"
    if len(expression) > MAX_CRON_LENGTH:
        return f"it is longer than {MAX_CRON_LENGTH} characters"
    if expression.startswith("@"):
        if expression.lower() not in ALIASES:
            return f"unknown alias; use one of {', '.join(sorted(ALIASES))}"
        return None
    fields = expression.split()
    if len(fields) != 5:
        return f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    for field in fields:
        for item in field.split(","):
            if item[:1].upper() in ("H", "R"):
                return "hashed (H) and random (R) values are not supported"
    try:
        croniter(expression, _REFERENCE).get_next(dt.datetime)
    except CroniterBadDateError:
        return "it never matches a date"
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        return str(exc) or type(exc).__name__
    return None


def validate_cron(expression: object, *, variable: str) -> str:
    """Return ``expression`` with its whitespace normalised, or raise ConfigurationError.

    The message names the setting, e.g.
    ``CUR_FETCH_CRON: invalid cron expression '61 * * * *': [61 * * * *] is not acceptable,
    out of range``.
    """
    if not isinstance(expression, str):
        raise ConfigurationError(f"{variable}: invalid cron expression: not a string")
    normalised = " ".join(expression.split())
    problem = _problem(normalised)
    if problem is not None:
        shown = expression[:MAX_CRON_LENGTH] + ("…" if len(expression) > MAX_CRON_LENGTH else "")
        raise ConfigurationError(f"{variable}: invalid cron expression {shown!r}: {problem}")
    return normalised


def load_timezone(name: object, *, variable: str) -> dt.tzinfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Berlin``), or ConfigurationError.

    ``UTC`` needs no time zone database.
    """
    if name in ("UTC", "Etc/UTC", "Z"):
        return dt.UTC
    if not isinstance(name, str) or len(name) > MAX_TIMEZONE_LENGTH:
        raise ConfigurationError(f"{variable}: unknown time zone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigurationError(f"{variable}: unknown time zone {name!r}") from exc


def _expanded(expression: str) -> str:
    return ALIASES.get(expression.lower(), expression)


def _as_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression in a time zone; computes tick instants (UTC)."""

    expression: str
    timezone: str = "UTC"

    @classmethod
    def parse(
        cls,
        expression: object,
        timezone: object = "UTC",
        *,
        variable: str = "cron",
        timezone_variable: str = "timezone",
    ) -> CronSchedule:
        """Validate both parts (ConfigurationError naming ``variable`` / ``timezone_variable``)."""
        cron = validate_cron(expression, variable=variable)
        load_timezone(timezone, variable=timezone_variable)
        return cls(cron, str(timezone))

    @property
    def tz(self) -> dt.tzinfo:
        """The time zone the expression is evaluated in."""
        return _tz(self.timezone)

    @property
    def follows_real_time(self) -> bool:
        """True when the minute or hour field is a wildcard (Vixie cron's DST rule)."""
        minute, hour = _expanded(self.expression).split()[:2]
        return minute.startswith("*") or hour.startswith("*")

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``moment`` (aware), in UTC."""
        after = _as_utc(moment)
        if self.tz is dt.UTC:
            return _utc_iter(self._croniter(after), forward=True)
        start = _wall(after, self.tz) - _DST_MARGIN
        best: dt.datetime | None = None
        for wall in _walls(self._croniter(start), forward=True):
            if best is not None and wall > _wall(best, self.tz) + _DST_MARGIN:
                return best
            for instant in self._instants(wall):
                if instant > after and (best is None or instant < best):
                    best = instant
        raise AssertionError("unreachable: a validated cron matches forever")  # pragma: no cover

    def latest_at_or_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The last tick at or before ``moment`` (aware), in UTC; None if there never was one.

        The catch-up tick: after downtime only this one runs, not every missed one.
        """
        until = _as_utc(moment)
        # Ticks fall on whole minutes and croniter steps strictly backwards: start just past
        # the last whole second at or before ``until``.
        just_after = until.replace(microsecond=0) + dt.timedelta(seconds=1)
        if self.tz is dt.UTC:
            it = self._croniter(just_after)
            try:
                return _utc_iter(it, forward=False)
            except CroniterBadDateError:
                return None
        start = _wall(just_after, self.tz) + _DST_MARGIN
        best: dt.datetime | None = None
        try:
            for wall in _walls(self._croniter(start), forward=False):
                if best is not None and wall < _wall(best, self.tz) - _DST_MARGIN:
                    return best
                for instant in self._instants(wall):
                    if instant <= until and (best is None or instant > best):
                        best = instant
        except CroniterBadDateError:
            return best
        raise AssertionError("unreachable")  # pragma: no cover

    def _croniter(self, start: dt.datetime) -> croniter:
        return croniter(_expanded(self.expression), start)

    def _instants(self, wall: dt.datetime) -> list[dt.datetime]:
        """The instants (UTC) at which the matching wall-clock time ``wall`` fires."""
        tz = self.tz
        first = wall.replace(tzinfo=tz, fold=0)
        second = wall.replace(tzinfo=tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            return [first.astimezone(dt.UTC)]
        if _wall(first.astimezone(dt.UTC), tz) == wall:  # repeated by a fall-back change
            instants = [first.astimezone(dt.UTC)]
            if self.follows_real_time:
                instants.append(second.astimezone(dt.UTC))
            return instants
        # Skipped by a spring-forward change.
        if self.follows_real_time:
            return []
        return [_transition(second.astimezone(dt.UTC), first.astimezone(dt.UTC), tz)]


@lru_cache(maxsize=64)
def _tz(name: str) -> dt.tzinfo:
    return load_timezone(name, variable="timezone")


def _wall(instant: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def _walls(it: croniter, *, forward: bool) -> Iterator[dt.datetime]:
    while True:
        value = it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)
        yield value.replace(fold=0)


def _utc_iter(it: croniter, *, forward: bool) -> dt.datetime:
    value: dt.datetime = it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)
    return value.astimezone(dt.UTC)


def _transition(before: dt.datetime, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant in ``(before, after]`` at which the UTC offset of ``tz`` changes."""
    offset = before.astimezone(tz).utcoffset()
    low, high = before, after
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def tick_job_id(schedule_id: str, tick: dt.datetime) -> str:
    """The job id of one tick, e.g. ``cur-fetch-schedule:2026-11-28T14:00:00Z`` (UTC)."""
    return f"{schedule_id}:{_as_utc(tick):%Y-%m-%dT%H:%M:%SZ}"


__all__ = [
    "ALIASES",
    "MAX_CRON_LENGTH",
    "MAX_TIMEZONE_LENGTH",
    "CronSchedule",
    "load_timezone",
    "tick_job_id",
    "validate_cron",
]
