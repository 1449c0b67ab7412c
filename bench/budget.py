"""A benchmark run as named parts on one time budget: each part ends done, failed or skipped, and why.

A GPU is lent for minutes, and one command may run at most ten of them. So the run is a list
of parts in order of value; before each one, the time it will take is estimated from what the
run has measured so far (a part is skipped, with the estimate and the time left in the report,
when it would not end inside the budget); a part that raises is recorded as failed with its
error in one line, and the run goes on with the next. Nothing here knows about GPUs: the caller
frees memory in `on_end`, and the clock can be replaced (the tests give a fake one).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DONE, FAILED, SKIPPED, RUNNING = "done", "failed", "skipped", "running"
NOTE_LIMIT = 240
"""Characters of a failure or skip note: one line of a report table."""


@dataclass(frozen=True)
class Estimate:
    """How long a part should take, and from what (measured figures or a stated prior)."""

    seconds: float
    basis: str


@dataclass
class Outcome:
    """What became of one part. `seconds` and `cpu_seconds` are None for a skipped part;
    `estimate` is what its gate let through (None: ungated, or nothing to estimate from), so a
    report shows the estimate beside the time it took."""

    status: str
    note: str = ""
    seconds: float | None = None
    cpu_seconds: float | None = None
    estimate: Estimate | None = None


def one_line(error: BaseException, limit: int = NOTE_LIMIT) -> str:
    """`Type: first line of the message`, at most `limit` characters, safe inside a table cell."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Run:
    """The parts of one run on a budget of `budget_s` seconds from construction.

    `on_change(name)` is called when a part starts and when it ends (the caller rewrites its
    report there, so that a run killed from outside still leaves what it measured); `on_end(name)`
    after every part that ran, whatever its outcome (the caller frees memory there).
    """

    def __init__(
        self,
        budget_s: float,
        on_change: Callable[[str], None] | None = None,
        on_end: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        log: Callable[[str], None] = print,
    ) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.start = clock()
        self.outcomes: dict[str, Outcome] = {}
        self.on_change, self.on_end, self.log = on_change, on_end, log

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def done(self, name: str) -> bool:
        outcome = self.outcomes.get(name)
        return outcome is not None and outcome.status == DONE

    def gate(self, estimate: Estimate | None, reserve_s: float = 0.0) -> str | None:
        """Why a piece of work estimated at `estimate` must not start now (None: it may).

        Without an estimate (nothing measured yet to estimate from) it may start while any of
        the budget is left. `reserve_s`: time to keep for the parts after it.
        """
        elapsed, left = self.elapsed(), self.left()
        if estimate is None:
            if left > 0:
                return None
            return f"the run was at {elapsed:.0f} s, past its {self.budget_s:.0f} s budget"
        if estimate.seconds + reserve_s <= left:
            return None
        kept = f" + {reserve_s:.0f} s kept for the later parts" if reserve_s else ""
        return (
            f"needs ~{estimate.seconds:.0f} s ({estimate.basis}){kept}; {max(left, 0):.0f} s left "
            f"of the {self.budget_s:.0f} s budget at {elapsed:.0f} s"
        )

    def skip(self, name: str, reason: str) -> None:
        self.outcomes[name] = Outcome(SKIPPED, reason[:NOTE_LIMIT])
        self.log(f"{name}: skipped ({reason})")
        self._changed(name)

    def part(
        self,
        name: str,
        work: Callable[[], str | None],
        estimate: Estimate | None = None,
        needs: Iterable[str] = (),
        gated: bool = True,
    ) -> bool:
        """Run `work` as the part `name` unless a part it `needs` did not end done or (when
        `gated`) its estimate does not fit; returns whether it ended done.

        `work` may return a note for the report. Any exception it raises is caught: the part is
        recorded as failed with its error in one line (the traceback goes to the log).
        """
        for dependency in needs:
            outcome = self.outcomes.get(dependency)
            if outcome is None or outcome.status != DONE:
                state = "not run" if outcome is None else outcome.status
                self.skip(name, f"needs {dependency}, which {state_phrase(state)}")
                return False
        reason = self.gate(estimate) if gated else None
        if reason is not None:
            self.skip(name, reason)
            return False
        self.outcomes[name] = Outcome(RUNNING, f"started at {self.elapsed():.0f} s", estimate=estimate)
        self._changed(name)
        self.log(f"{name} ..." + (f" (~{estimate.seconds:.0f} s: {estimate.basis})" if estimate else ""))
        start, cpu_start = self.clock(), time.process_time()
        try:
            note = work() or ""
            status = DONE
        except Exception as error:  # recorded, and the run goes on: see the module docstring
            self.log("".join(traceback.format_exception(error)).rstrip())
            note, status = one_line(error), FAILED
        seconds, cpu = self.clock() - start, time.process_time() - cpu_start
        self.outcomes[name] = Outcome(status, note, seconds, cpu, estimate if gated else None)
        self.log(f"{name}: {status} in {seconds:.1f} s, CPU {cpu:.1f} s (run so far {self.elapsed():.1f} s)")
        if self.on_end is not None:
            self.on_end(name)
        self._changed(name)
        return status == DONE

    def summary(self) -> str:
        """One sentence: how many parts ended how, naming the ones that did not end done."""
        by_status: dict[str, list[str]] = {}
        for name, outcome in self.outcomes.items():
            by_status.setdefault(outcome.status, []).append(name)
        pieces = [f"{len(by_status.get(DONE, []))} done"]
        for status in (FAILED, SKIPPED, RUNNING):
            if by_status.get(status):
                pieces.append(f"{len(by_status[status])} {status} ({', '.join(by_status[status])})")
        return ", ".join(pieces)

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)


def state_phrase(status: str) -> str:
    """`needs X, which ...`: how a dependency ended, as words."""
    return {FAILED: "failed", SKIPPED: "was skipped", RUNNING: "did not end", "not run": "did not run"}.get(
        status, status
    )
