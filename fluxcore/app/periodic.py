"""When periodic schedule handlers run next. Each run's deadline follows from the previous
deadline, not from when the handler ran, so the runs do not drift; runs missed while nothing
was running are skipped to the next time still ahead."""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from .handlers import Periodic

__all__ = ["check_cron", "first_deadline", "next_deadline"]


def check_cron(expression: str) -> None:
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from exc


def _cron_after(expression: str, ms: int) -> int:
    after = datetime.fromtimestamp(ms / 1000, UTC)
    return int(next(CronSim(expression, after)).timestamp() * 1000)


def first_deadline(periodic: Periodic, now_ms: int) -> int:
    if periodic.cron is not None:
        return _cron_after(periodic.cron, now_ms)
    delay = periodic.initial_delay if periodic.initial_delay is not None else periodic.every
    assert delay is not None
    return now_ms + int(delay.total_seconds() * 1000)


def next_deadline(periodic: Periodic, previous_ms: int, now_ms: int) -> int:
    """The first slot after `previous_ms` that is still ahead of `now_ms`."""
    if periodic.cron is not None:
        return _cron_after(periodic.cron, max(previous_ms, now_ms))
    assert periodic.every is not None
    step = max(int(periodic.every.total_seconds() * 1000), 1)
    missed = max(now_ms - previous_ms, 0) // step
    return previous_ms + (missed + 1) * step
