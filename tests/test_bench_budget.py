"""`bench.budget.Run`, the gates and outcomes of `bench.gpu`'s parts, on a clock the test moves:
a part runs only when its estimate fits what is left, one that raises is recorded as failed
with its error in one line and the next part still runs, and a part whose prerequisite did not
end done is skipped saying which."""

from __future__ import annotations

import pytest
from worker_support import HandClock

from bench.budget import DONE, FAILED, NOTE_LIMIT, SKIPPED, Estimate, Run, one_line


def make_run(budget_s: float = 100.0) -> tuple[Run, HandClock, list[str]]:
    clock, ended = HandClock(), []
    run = Run(budget_s, on_end=ended.append, clock=clock, log=lambda _message: None)
    return run, clock, ended


def test_a_part_runs_while_its_estimate_fits_and_is_skipped_with_the_reason_once_it_does_not() -> None:
    run, clock, _ = make_run(100.0)

    def work() -> str:
        clock.now += 30.0
        return "measured"

    assert run.part("first", work, Estimate(60.0, "2 requests at 30 s"))
    assert run.outcomes["first"].status == DONE
    assert run.outcomes["first"].seconds == pytest.approx(30.0)
    assert run.outcomes["first"].note == "measured"
    assert run.outcomes["first"].estimate == Estimate(60.0, "2 requests at 30 s")  # shown beside 30 s
    # 70 s left: an estimate of 70 fits, one of 71 does not.
    assert run.part("fits", lambda: None, Estimate(70.0, "exact"))
    assert not run.part("second", work, Estimate(71.0, "compile ~61 s + 1 request"))
    outcome = run.outcomes["second"]
    assert outcome.status == SKIPPED and outcome.seconds is None
    assert outcome.note == "needs ~71 s (compile ~61 s + 1 request); 70 s left of the 100 s budget at 30 s"
    assert clock.now == 1030.0  # the skipped part's work never ran


def test_without_an_estimate_a_part_runs_until_the_budget_is_spent() -> None:
    run, clock, _ = make_run(10.0)
    assert run.part("first measurement", lambda: None)
    clock.now += 10.5
    assert not run.part("too late", lambda: None)
    assert run.outcomes["too late"].note == "the run was at 10 s, past its 10 s budget"


def test_a_reserve_keeps_time_for_later_parts() -> None:
    run, _, _ = make_run(100.0)
    assert run.gate(Estimate(50.0, "a"), reserve_s=50.0) is None
    reason = run.gate(Estimate(50.0, "a"), reserve_s=51.0)
    assert reason == "needs ~50 s (a) + 51 s kept for the later parts; 100 s left of the 100 s budget at 0 s"


def test_a_part_that_raises_is_failed_with_one_bounded_line_and_the_run_goes_on() -> None:
    run, clock, ended = make_run(100.0)

    def broken() -> None:
        clock.now += 5.0
        raise RuntimeError(
            "CUDA out of memory | tried to allocate 2.00 GiB\nsecond line of the message " + "x" * 500
        )

    assert not run.part("compile", broken, Estimate(10.0, "prior"))
    outcome = run.outcomes["compile"]
    assert outcome.status == FAILED
    assert outcome.seconds == pytest.approx(5.0)
    assert (
        outcome.note == "RuntimeError: CUDA out of memory / tried to allocate 2.00 GiB"
    )  # no "|": a table cell
    assert ended == ["compile"]  # the caller frees memory after a failed part too
    assert run.part("weights", lambda: "ok", Estimate(1.0, "prior"))
    assert ended == ["compile", "weights"]
    assert run.summary() == "1 done, 1 failed (compile)"

    long = one_line(ValueError("y" * 1000))
    assert len(long) == NOTE_LIMIT and long.startswith("ValueError: yyy") and long.endswith("…")
    assert one_line(KeyError()) == "KeyError"


def test_a_part_whose_prerequisite_did_not_end_done_is_skipped_naming_it() -> None:
    run, _, ended = make_run(100.0)

    def broken() -> None:
        raise OSError("disk full")

    run.part("write-tree", broken)
    assert not run.part("load", lambda: None, needs=("write-tree",), gated=False)
    assert run.outcomes["load"].note == "needs write-tree, which failed"
    assert not run.part("requests", lambda: None, needs=("load",))
    assert run.outcomes["requests"].note == "needs load, which was skipped"
    assert not run.part("child", lambda: None, needs=("never",))
    assert run.outcomes["child"].note == "needs never, which did not run"
    assert ended == ["write-tree"]
    assert run.summary() == "0 done, 1 failed (write-tree), 3 skipped (load, requests, child)"


def test_an_ungated_part_runs_past_the_budget() -> None:
    run, clock, _ = make_run(1.0)
    clock.now += 5.0
    assert run.part("setup", lambda: None, Estimate(100.0, "x"), gated=False)
