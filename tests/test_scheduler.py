"""The process fan-out's scheduler, event by event, in milliseconds: no processes, no databases.

Only the process boundary is faked: a slot's executor hands its tenant to the test instead of a worker
process, and the test says how the tenant ends (a result, a dead worker). The parent's reads run inline.
The real-process tests (test_engine_*, test_timeout, test_aimd) remain the end-to-end proof.
"""

from __future__ import annotations

import signal
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

import pytest

from tenants.engine.fanout import FailurePolicy, Whereabouts, slots
from tenants.engine.fanout.scheduler import READ_BACK, Scheduler, drain_grace
from tenants.engine.fanout.slots import CHANGING, CLOCK_SIZE, PID, STARTED, Slot, Slots
from tenants.model import Status, Tenant, TenantResult


class Workers:
    """Every slot's worker process, faked: what each was given, and how many were started."""

    def __init__(self, now, start=True):
        self.now, self.start = now, start
        self.spawned: list[Slot] = []
        self.given: list[tuple[Tenant, Future, list]] = []

    def spawn(self) -> Slot:
        clock = [0.0] * CLOCK_SIZE
        slot = Slot(FakeExecutor(self, clock), clock)
        self.spawned.append(slot)
        return slot

    def pending(self):
        return [(tenant, future, clock) for tenant, future, clock in self.given if not future.done()]


class FakeExecutor:
    """A slot's executor of one process: the worker writes its clock as it starts the tenant, and at once says
    it runs env.py on it (CHANGING; a test clears that for a worker still connecting or reading)."""

    def __init__(self, workers, clock):
        self.workers, self.clock, self.shut = workers, clock, False

    def submit(self, _fn, tenant):
        if not self.workers.start:
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        future = Future()
        self.clock[PID], self.clock[STARTED], self.clock[CHANGING] = 4242, self.workers.now(), 1.0
        self.workers.given.append((tenant, future, self.clock))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut = True


class InlineThreads:
    """The parent's reads, run as they are submitted."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


KEEP_GOING = FailurePolicy(None)


def scheduler(n=6, *, concurrency=2, policy=KEEP_GOING, read=lambda t: None, where=lambda t: Whereabouts("p1"),
              timeout=None, retries=1, start=True, precheck=True):
    now = [100.0]  # a time.monotonic() reading: never 0.0, which a clock reads as "not started"
    workers = Workers(lambda: now[0], start)
    reported: list[TenantResult] = []
    run = Scheduler([Tenant(f"t{i}", f"sqlite:///t{i}.db") for i in range(n)], policy, reported.append,
                    concurrency=concurrency, retries=retries, slots=Slots(workers.spawn, lambda t: None),
                    threads=InlineThreads(), read=read, where=where, timeout=timeout, clock=lambda: now[0],
                    precheck=precheck)
    return SimpleNamespace(run=run, workers=workers, reported=reported, now=now)


def upgraded(name, attempt):
    return TenantResult(name, Status.UPGRADED, "base", "p1", ("p1",), attempts=1, duration=1.0)


def settle(s, outcome=upgraded):
    """ProcessStrategy.run's loop, each tenant handed to a worker ending as ``outcome(name, attempt)`` says."""
    attempts: dict[str, int] = {}
    while s.run.start():
        for tenant, future, clock in s.workers.pending():
            attempts[tenant.name] = attempts.get(tenant.name, 0) + 1
            s.now[0] += 1.0
            try:
                result = outcome(tenant.name, attempts[tenant.name])
            except BaseException as err:  # noqa: BLE001 - the worker's end, handed to its future
                future.set_exception(err)
            else:
                clock[STARTED] = 0.0
                future.set_result(result)
        for future in s.run.wait():
            s.run.on_done(future)
    return s.run.outcome()


def past_the_prechecks(s):
    """Start, and let the parent's first reads (all: needs work) hand their tenants to workers."""
    assert s.run.start()
    for future in s.run.wait():
        s.run.on_done(future)
    assert s.run.start()
    return sorted(s.workers.pending(), key=lambda given: given[0].name)  # `wait` returns a set: any order


def test_prechecks_finish_tenants_at_target_and_stop_at_the_first_needing_work():
    reads = []

    def read(tenant):
        reads.append(tenant.name)
        return TenantResult(tenant.name, Status.UP_TO_DATE, "p1", "p1") if tenant.name in ("t0", "t1") else None

    s = scheduler(12, read=read)
    fan = settle(s)
    assert [r.status for r in fan.results] == [Status.UP_TO_DATE] * 2 + [Status.UPGRADED] * 10
    assert sorted(t.name for t, _, _ in s.workers.given) == sorted(f"t{i}" for i in range(2, 12))
    # One read at first, two once t0 was found at the target (slow start); t2 needs work: stop reading, the
    # workers read the rest (a read in the parent of a tenant with work is a second login for it).
    assert reads == ["t0", "t1", "t2"]
    assert len(s.workers.spawned) == 2 and fan.throttled == 0 and fan.concurrency_changes == ()
    assert sorted(r.tenant for r in s.reported[:2]) == ["t0", "t1"]  # reported as they finish, returned in order


def test_a_throttle_halves_the_limit_once_per_epoch_and_the_tenant_runs_again():
    def outcome(name, attempt):
        if name in ("t1", "t2") and attempt == 1:  # started together, throttled together: one cut
            return TenantResult(name, Status.THROTTLED, "base", None, attempts=1, duration=0.5, error="(10928)")
        return upgraded(name, attempt)

    s = scheduler(8, concurrency=4)
    fan = settle(s, outcome)
    assert [r.status for r in fan.results] == [Status.UPGRADED] * 8
    assert fan.throttled == 2
    assert [n for _, n in fan.concurrency_changes] == [4, 2, 3, 4]  # cut once, then grown back by successes
    t1 = fan.results[1]
    assert (t1.attempts, t1.duration, t1.from_revision, t1.applied) == (2, 1.5, "base", ("p1",))


def test_a_tenant_throttled_while_running_alone_more_than_its_retries_fails():
    def outcome(name, attempt):
        return TenantResult(name, Status.THROTTLED, "base", None, attempts=1, error="(10928)")

    fan = settle(scheduler(2, retries=2), outcome)
    assert [r.status for r in fan.results] == [Status.FAILED, Status.FAILED]
    assert all("(10928)" in r.error for r in fan.results)
    assert fan.concurrency_changes[-1] == (fan.concurrency_changes[-1][0], 1)


def test_a_worker_that_dies_fails_its_tenant_only_and_the_next_tenant_gets_a_new_process():
    def outcome(name, attempt):
        if name == "t1":
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        return upgraded(name, attempt)

    s = scheduler(5)
    fan = settle(s, outcome)
    assert [r.status for r in fan.results] == [Status.UPGRADED, Status.FAILED] + [Status.UPGRADED] * 3
    assert "the worker pool broke" in fan.results[1].error
    assert len(s.workers.spawned) == 3 and [slot.pool.shut for slot in s.workers.spawned].count(True) == 1


def test_workers_that_cannot_start_fail_every_tenant_after_three_tries():
    s = scheduler(4, start=False)
    fan = settle(s)
    assert [r.status for r in fan.results] == [Status.FAILED] * 4
    assert all("worker processes could not start" in r.error and r.attempts == 0 for r in fan.results)
    assert len(s.workers.spawned) == 3


def test_the_failure_policy_lets_tenants_in_flight_finish_and_skips_the_rest():
    def outcome(name, attempt):
        return TenantResult(name, Status.FAILED, "base", "base", attempts=1, error="boom") if name == "t0" \
            else upgraded(name, attempt)

    fan = settle(scheduler(5, policy=FailurePolicy(1)), outcome)
    assert [r.status for r in fan.results] == [Status.FAILED, Status.UPGRADED] + [Status.SKIPPED] * 3
    assert fan.results[2].error == "not started: the failure policy stopped the run"


def test_ctrl_c_drains_the_tenants_in_flight_and_skips_the_rest():
    s = scheduler(5)
    assert len(past_the_prechecks(s)) == 2
    s.run.on_interrupt(signal.SIGINT)
    for tenant, future, _ in s.workers.pending():
        future.set_result(upgraded(tenant.name, 1))
    for future in s.run.wait():
        s.run.on_done(future)
    assert not s.run.start()
    fan = s.run.outcome()
    assert [r.status for r in fan.results] == [Status.UPGRADED] * 2 + [Status.SKIPPED] * 3
    assert fan.results[4].error == "not started: interrupted (Ctrl-C)"


def test_a_second_signal_kills_the_tenants_in_flight_and_reads_back_where_they_stopped(monkeypatch):
    kills = []
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: kills.append((pid, sig))))
    # What the killed workers had committed comes back from the read (the tenants' history rows): issue 11.
    s = scheduler(5, where=lambda t: Whereabouts("p2", ("p1", "p2"), "base"))
    assert len(past_the_prechecks(s)) == 2
    s.run.on_signal(signal.SIGTERM)  # what the handler does: noted, acted on by the loop
    s.run.on_signal(signal.SIGINT)
    s.run.on_signal(signal.SIGINT)  # a third: harmless
    assert s.run.wait() == set()
    assert kills == [(4242, signal.SIGKILL)] * 2 and s.run.halted
    for _, future, _ in s.workers.pending():
        future.set_exception(BrokenProcessPool("killed"))  # what the SIGKILL does to its future
    fan = settle(s)
    assert [r.status for r in fan.results] == [Status.FAILED] * 2 + [Status.SKIPPED] * 3
    stopped = fan.results[0]
    assert (stopped.from_revision, stopped.to_revision, stopped.applied) == ("base", "p2", ("p1", "p2"))
    assert stopped.error.startswith("interrupted (SIGTERM) while migrating: its worker process was killed")
    assert fan.results[4].error == "not started: interrupted (SIGTERM)"


def test_a_worker_stopped_or_timed_out_before_env_py_ran_changed_nothing(monkeypatch):
    """A worker killed while still connecting, waiting for the lock or reading (CHANGING not set) did not touch
    its tenant: the report says so, for a timeout as for a stop."""
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: None))
    s = scheduler(3, concurrency=2, timeout=10.0, where=lambda t: Whereabouts("base", (), "base"))
    (_, reading, clock), (_, _, other) = past_the_prechecks(s)
    clock[CHANGING] = other[CHANGING] = 0.0
    s.now[0] += 10.5
    s.run.wait()  # the timeout: both killed
    reading.set_exception(BrokenProcessPool("killed"))
    fan = settle(s)
    timed_out = fan.results[0]
    assert timed_out.status is Status.TIMED_OUT and timed_out.to_revision == "base"
    assert timed_out.error.startswith("timed out: 10s after it started (--tenant-timeout) env.py had not run on it "
                                      "yet (connecting, waiting for its lock, reading): its worker process was "
                                      "killed; nothing was changed")

    s = scheduler(2, concurrency=2, where=lambda t: Whereabouts("base", (), "base"))
    (_, reading, clock), *_ = past_the_prechecks(s)
    clock[CHANGING] = 0.0
    s.run.on_signal(signal.SIGTERM)
    s.run.on_signal(signal.SIGINT)
    s.run.wait()
    for _, future, _ in s.workers.pending():
        future.set_exception(BrokenProcessPool("killed"))
    stopped = settle(s).results[0]
    assert stopped.status is Status.FAILED
    assert stopped.error.startswith("interrupted (SIGTERM) before env.py ran on it (connecting, waiting for its "
                                    "lock, reading): its worker process was killed; nothing was changed")


def test_a_tenant_that_applied_revisions_before_a_throttle_is_never_said_unchanged(monkeypatch):
    """Handed back throttled after committing p1, run again, killed before env.py this time: this run did change
    it (p1), so the report says the revision in progress rolls back, never "nothing was changed"."""
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: None))
    s = scheduler(1, concurrency=1, timeout=10.0, where=lambda t: Whereabouts("p1", ("p1",), "base"))
    (_, first, _), = past_the_prechecks(s)
    first.set_result(TenantResult("t0", Status.THROTTLED, "base", "p1", ("p1",), attempts=1, error="(10928)"))
    for future in s.run.wait():
        s.run.on_done(future)
    assert s.run.start()
    (_, again, clock), = s.workers.pending()
    clock[CHANGING] = 0.0  # the second run is still connecting
    s.now[0] += 10.5
    s.run.wait()
    again.set_exception(BrokenProcessPool("killed"))
    (result,) = settle(s).results
    assert result.status is Status.TIMED_OUT and result.applied == ("p1",)
    assert "nothing was changed" not in result.error and "rolls the revision in progress back" in result.error


def test_without_prechecks_every_tenant_goes_to_a_worker_and_the_parent_reads_none():
    """precheck=False (PostgreSQL over psycopg: the workers' read under the lock costs one round trip too):
    the parent reads no tenant ahead; tenants at the target are reported by the workers."""
    reads = []
    s = scheduler(5, concurrency=2, read=lambda t: reads.append(t.name), precheck=False)
    fan = settle(s, lambda name, attempt: TenantResult(name, Status.UP_TO_DATE, "p1", "p1", attempts=1))
    assert reads == [] and [r.status for r in fan.results] == [Status.UP_TO_DATE] * 5
    assert sorted(t.name for t, _, _ in s.workers.given) == [f"t{i}" for i in range(5)]


def test_the_grace_ends_the_drain_and_a_read_back_that_hangs_is_given_up(monkeypatch):
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: None))
    s = scheduler(3, concurrency=3)
    s.run.drain = lambda signum: 5.0
    assert len(past_the_prechecks(s)) == 3
    s.run.threads = NeverThreads()
    s.run.on_signal(signal.SIGINT)
    assert s.run.wait() == set() and not s.run.halted
    s.now[0] += 5.0
    (_, running, _), *coming_up = s.workers.pending()
    for _, _, clock in coming_up:
        clock[PID] = clock[STARTED] = 0.0  # a worker still coming up (no pid yet): dropped, its tenant skipped
    s.run.wait()
    assert s.run.halted
    running.set_exception(BrokenProcessPool("killed"))
    for future in s.run.wait():
        s.run.on_done(future)
    assert s.run.start()  # the read of where t0 stopped, which never ends
    s.now[0] += READ_BACK
    s.run.wait()
    assert not s.run.start()
    fan = s.run.outcome()
    [stopped] = [r for r in fan.results if r.status is Status.FAILED]
    assert [r.status for r in fan.results].count(Status.SKIPPED) == 2
    assert stopped.to_revision is None and stopped.error.startswith("interrupted (Ctrl-C) while migrating")


class NeverThreads:
    """Reads that never end (a dead connection)."""

    def submit(self, fn, *args):
        return Future()


def test_a_tenant_past_its_timeout_is_killed_and_reported_at_the_revision_it_reached(monkeypatch):
    kills = []
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: kills.append((pid, sig))))
    s = scheduler(3, policy=FailurePolicy(1), timeout=5.0, where=lambda t: Whereabouts("p1"))
    (t0, f0, _), (t1, f1, c1) = past_the_prechecks(s)
    s.now[0] += 6.0
    c1[STARTED] = 0.0  # t1's worker is done with it: never killed for it
    f1.set_result(upgraded(t1.name, 1))
    for future in s.run.wait():  # kills t0's worker, then sees t1 done
        s.run.on_done(future)
    assert kills == [(4242, signal.SIGKILL)]
    assert not s.run.starting()  # the kill counts toward the failure policy before t0's result is in
    f0.set_exception(BrokenProcessPool("killed"))  # what the SIGKILL does to its future
    while s.run.start():
        for future in s.run.wait():
            s.run.on_done(future)
    fan = s.run.outcome()
    assert [r.status for r in fan.results] == [Status.TIMED_OUT, Status.UPGRADED, Status.SKIPPED]
    timed_out = fan.results[0]
    assert (timed_out.to_revision, timed_out.duration, timed_out.attempts) == ("p1", 6.0, 1)
    assert "timed out: still running 5s" in timed_out.error


def test_a_worker_whose_pid_is_not_visible_yet_is_not_killed_but_looked_at_again_soon(monkeypatch):
    kills = []
    monkeypatch.setattr(slots, "os", SimpleNamespace(kill=lambda pid, sig: kills.append(pid)))
    s = scheduler(1, timeout=5.0)
    (_, _, clock), = past_the_prechecks(s)
    clock[PID] = 0.0  # never kill(0): that is this whole process group
    assert s.run.slots.kill_overdue(110.0, 5.0) == slots.POLL and kills == []
    clock[PID] = 4242
    assert s.run.slots.kill_overdue(110.0, 5.0) is None and kills == [4242]
    assert s.run.slots.kill_overdue(110.0, None) is None


@pytest.mark.parametrize("n", [1, 3])
def test_the_limit_never_exceeds_the_fleet(n):
    assert scheduler(n, concurrency=8).run.aimd.limit == n


def test_the_drain_grace_is_short_in_github_actions_and_configurable():
    assert drain_grace(signal.SIGINT, {}) is None  # a person at the terminal presses Ctrl-C again
    assert drain_grace(signal.SIGTERM, {}) == 20.0
    assert drain_grace(signal.SIGINT, {"GITHUB_ACTIONS": "true"}) < 7.5  # before the runner's SIGTERM
    assert drain_grace(signal.SIGTERM, {"TENANTS_DRAIN_GRACE": "2.5"}) == 2.5
    assert drain_grace(signal.SIGTERM, {"TENANTS_DRAIN_GRACE": "none"}) is None


def test_a_read_of_the_parent_still_going_at_the_timeout_is_given_up_and_its_tenant_timed_out():
    class Hanging:
        """Reads that never end, but one."""

        def submit(self, fn, tenant):
            future = Future()
            if tenant.name == "t1":
                future.set_result(None)  # needs work
            return future

    s = scheduler(3, concurrency=3, timeout=5.0)
    s.run.threads = Hanging()
    s.run.read_window = 3  # as once tenants were found at the target (slow start): three reads in flight
    assert s.run.start()
    s.now[0] += 4.0
    assert s.run.give_up_late_reads() == 1.0  # not yet: the first read is due in a second
    s.now[0] += 1.5  # the read of t1 ended in time (its future is done): never given up
    for future in s.run.wait():
        s.run.on_done(future)
    late = {r.tenant: r for r in s.reported}
    assert sorted(late) == ["t0", "t2"] and {r.status for r in late.values()} == {Status.TIMED_OUT}
    assert late["t0"].duration == 5.5 and late["t0"].to_revision is None
    assert late["t0"].error.startswith("timed out: reading its revision (before any change) took 5s")
    assert [t.name for t, _, _ in s.workers.pending()] == [] and [t.name for t in s.run.ready] == ["t1"]


def test_the_parents_reads_start_one_at_a_time_but_a_slow_read_holds_nobody_back():
    """Slow start (issue 13): one read at first, so a fleet being upgraded logs in once more than its tenants
    at most; but a read still going after SLOW_READ (an unreachable tenant waiting out its connect timeout)
    no longer counts, and the next reads start."""
    submitted = []

    class Hanging:
        def submit(self, fn, tenant):
            submitted.append(tenant.name)
            return Future()  # never ends

    s = scheduler(4, concurrency=3)
    s.run.threads = Hanging()
    assert s.run.start() and submitted == ["t0"]
    s.now[0] += 0.5
    s.run.start()
    assert submitted == ["t0"]  # a read in flight: still one at a time
    s.now[0] += 0.6  # t0's read has taken 1.1 s: slow
    s.run.start()
    assert submitted == ["t0", "t1"]
    s.now[0] += 1.0  # both slow now
    s.run.start()
    assert submitted == ["t0", "t1", "t2"]  # at most `concurrency` reads at once
