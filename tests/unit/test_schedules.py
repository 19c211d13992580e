"""Cron schedules: validation, next ticks (UTC, other zones, DST), tick ids, catch-up."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from cur_ray.domain.schedules import CronSchedule, load_timezone, tick_job_id, validate_cron
from cur_ray.errors import ConfigurationError
from cur_ray.services.jobs import validate_job_id
from cur_ray.services.scheduler import (
    ScheduleView,
    due_ticks,
    schedules_from_settings,
    seconds_until_next_tick,
)
from cur_ray.settings import Settings

UTC = dt.UTC
BERLIN = "Europe/Berlin"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ticks(schedule: CronSchedule, start: dt.datetime, count: int) -> list[dt.datetime]:
    out, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        out.append(moment)
    return out


def local(moments: list[dt.datetime], zone: str) -> list[str]:
    tz = load_timezone(zone, variable="tz")
    return [m.astimezone(tz).strftime("%d %H:%M%z") for m in moments]


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("0 25 * * *", "out of range"),
        ("* * *", "expected 5 fields"),
        ("0 * * * * *", "expected 5 fields"),  # no seconds field
        ("", "empty"),
        ("*/0 * * * *", "step"),
        ("0 0 30 2 *", "never matches"),
        ("H * * * *", "not supported"),  # croniter's hashed and random values differ per process
        ("R * * * *", "not supported"),
        ("@reboot", "unknown alias"),
        ("x" * 200, "longer than 128"),
    ],
)
def test_invalid_cron_names_the_variable(expression: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        validate_cron(expression, variable="CUR_FETCH_CRON")
    message = str(raised.value)
    assert message.startswith(f"CUR_FETCH_CRON: invalid cron expression '{expression[:128]}")
    assert reason in message
    assert len(message) < 400


@pytest.mark.parametrize(
    "expression",
    ["0 * * * *", "15 * * * *", "*/5 1-3 * * mon-fri", "0 0 L * *", "0 0 29 2 *", "@hourly"],
)
def test_valid_cron_is_accepted_and_whitespace_normalised(expression: str) -> None:
    assert validate_cron(f"  {expression}  ", variable="X") == expression
    assert validate_cron("0  *\t* * *", variable="X") == "0 * * * *"


def test_settings_are_checked_variable_by_variable() -> None:
    defaults = schedules_from_settings(Settings())
    assert {k: v.expression for k, v in defaults.items()} == {
        "cur-fetch-schedule": "0 * * * *",
        "cur-aggregate-schedule": "15 * * * *",
    }
    assert {v.timezone for v in defaults.values()} == {"UTC"}
    with pytest.raises(ConfigurationError, match=r"^CUR_AGGREGATE_CRON: invalid cron .*'15 \* \*'"):
        schedules_from_settings(Settings(cur_aggregate_cron="15 * *"))
    with pytest.raises(ConfigurationError, match=r"^CUR_SCHEDULER_TIMEZONE: unknown time zone"):
        schedules_from_settings(Settings(cur_scheduler_timezone="Mars/Olympus"))
    for bad in ("", "/etc/passwd", "../x", "Europe"):
        with pytest.raises(ConfigurationError, match="CUR_SCHEDULER_TIMEZONE"):
            load_timezone(bad, variable="CUR_SCHEDULER_TIMEZONE")


# ---------------------------------------------------------------------------------------------
# Next tick


def test_next_tick_in_utc() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    assert hourly.next_after(at(2026, 11, 28, 13, 59, 59)) == at(2026, 11, 28, 14)
    assert hourly.next_after(at(2026, 11, 28, 14)) == at(2026, 11, 28, 15)  # strictly after
    assert hourly.next_after(at(2026, 12, 31, 23, 30)) == at(2027, 1, 1, 0)
    quarter = CronSchedule.parse("15 * * * *")
    assert ticks(quarter, at(2026, 11, 28, 14, 20), 2) == [
        at(2026, 11, 28, 15, 15),
        at(2026, 11, 28, 16, 15),
    ]
    # The answer is UTC whatever zone the input is in.
    tokyo = dt.timezone(dt.timedelta(hours=9))
    result = hourly.next_after(dt.datetime(2026, 11, 28, 23, 30, tzinfo=tokyo))
    assert result == at(2026, 11, 28, 15)
    assert result.utcoffset() == dt.timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        hourly.next_after(dt.datetime(2026, 1, 1))


def test_next_tick_in_another_time_zone() -> None:
    daily = CronSchedule.parse("30 2 * * *", "America/New_York")
    # 02:30 EST is 07:30 UTC in winter, 06:30 UTC in summer.
    assert daily.next_after(at(2026, 1, 10)) == at(2026, 1, 10, 7, 30)
    assert daily.next_after(at(2026, 7, 10)) == at(2026, 7, 10, 6, 30)
    kolkata = CronSchedule.parse("0 9 * * mon", "Asia/Kolkata")  # +05:30, no DST
    assert kolkata.next_after(at(2026, 11, 28)) == at(2026, 11, 30, 3, 30)


def test_spring_forward_fixed_time_runs_once_at_the_end_of_the_gap() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    daily = CronSchedule.parse("30 2 * * *", BERLIN)
    got = ticks(daily, at(2026, 3, 27, 12), 3)
    assert local(got, BERLIN) == ["28 02:30+0100", "29 03:00+0200", "30 02:30+0200"]
    assert got[1] == at(2026, 3, 29, 1)


def test_spring_forward_hourly_follows_real_time() -> None:
    hourly = CronSchedule.parse("30 * * * *", BERLIN)
    got = ticks(hourly, at(2026, 3, 28, 23, 45), 3)
    assert local(got, BERLIN) == ["29 01:30+0100", "29 03:30+0200", "29 04:30+0200"]
    assert [b - a for a, b in itertools.pairwise(got)] == [dt.timedelta(hours=1)] * 2


def test_fall_back_fixed_time_runs_once_hourly_runs_every_hour() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:xx happens twice.
    daily = CronSchedule.parse("30 2 * * *", BERLIN)
    got = ticks(daily, at(2026, 10, 24, 12), 2)
    assert local(got, BERLIN) == ["25 02:30+0200", "26 02:30+0100"]
    hourly = CronSchedule.parse("0 * * * *", BERLIN)
    got = ticks(hourly, at(2026, 10, 24, 22, 30), 4)
    assert got == [
        at(2026, 10, 24, 23),
        at(2026, 10, 25, 0),
        at(2026, 10, 25, 1),
        at(2026, 10, 25, 2),
    ]
    assert local(got, BERLIN) == [
        "25 01:00+0200",
        "25 02:00+0200",
        "25 02:00+0100",
        "25 03:00+0100",
    ]
    # From inside the repeated hour, the second 02:30 is still ahead.
    half = CronSchedule.parse("30 * * * *", BERLIN)
    assert half.next_after(at(2026, 10, 25, 0, 45)) == at(2026, 10, 25, 1, 30)


# ---------------------------------------------------------------------------------------------
# Catch-up and tick ids


def test_latest_due_tick_is_one_tick_at_or_before_now() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    now = at(2026, 11, 28, 14, 37)
    assert hourly.latest_at_or_before(now) == at(2026, 11, 28, 14)
    assert hourly.latest_at_or_before(at(2026, 11, 28, 14)) == at(2026, 11, 28, 14)
    half_second_before = at(2026, 11, 28, 13, 59, 59) + dt.timedelta(microseconds=500_000)
    assert hourly.latest_at_or_before(half_second_before) == at(2026, 11, 28, 13)
    yearly = CronSchedule.parse("@yearly", BERLIN)
    assert yearly.latest_at_or_before(now) == at(2025, 12, 31, 23)
    fall_back = CronSchedule.parse("0 * * * *", BERLIN)
    assert fall_back.latest_at_or_before(at(2026, 10, 25, 1, 30)) == at(2026, 10, 25, 1)


def view(
    next_tick: dt.datetime | None, *, cron: str = "0 * * * *", enabled: bool = True
) -> ScheduleView:
    return ScheduleView(
        schedule_id="cur-fetch-schedule",
        job_name="cur-fetch",
        cron=cron,
        timezone="UTC",
        enabled=enabled,
        last_tick_at=None,
        next_tick_at=next_tick,
        updated_at=None,
    )


def test_missed_ticks_catch_up_with_the_latest_one_only() -> None:
    now = at(2026, 11, 28, 14, 7)
    five_hours_late = view(at(2026, 11, 28, 10))  # 10:00 ... 14:00 were all missed
    [due] = due_ticks([five_hours_late], now)
    assert due.tick == at(2026, 11, 28, 14)
    assert due.job_id == "cur-fetch-schedule:2026-11-28T14:00:00Z"
    assert due_ticks([view(at(2026, 11, 28, 15))], now) == []  # not yet
    assert due_ticks([view(at(2026, 11, 28, 10), enabled=False)], now) == []
    assert due_ticks([view(None)], now) == []


def test_tick_job_id_is_utc_and_a_valid_job_id() -> None:
    plus_one = dt.timezone(dt.timedelta(hours=1))
    tick = dt.datetime(2026, 11, 28, 15, 0, tzinfo=plus_one)
    job_id = tick_job_id("cur-fetch-schedule", tick)
    assert job_id == "cur-fetch-schedule:2026-11-28T14:00:00Z"
    assert validate_job_id(job_id) == job_id
    assert validate_job_id(tick_job_id("cur-aggregate-schedule", tick))


def test_seconds_until_next_tick() -> None:
    now = at(2026, 11, 28, 14, 59, 30)
    assert seconds_until_next_tick([view(at(2026, 11, 28, 15))], now) == 30.0
    assert seconds_until_next_tick([view(at(2026, 11, 28, 14))], now) == 0.0
    assert seconds_until_next_tick([view(at(2026, 11, 28, 15), enabled=False)], now) is None
    assert seconds_until_next_tick([], now) is None
