"""A connection that goes silent mid-migration (issue 11): a black-holed flow, a NAT that forgot it.

The fault is a loopback TCP proxy in front of PostgreSQL that, once told, stops forwarding both ways on the
connections it carries: no RST, no FIN, it just stops reading and writing and keeps its sockets open. New
connections are carried as before (a NAT that forgot one flow).

What ends the tenant through it, found by running without ``--tenant-timeout`` (the run was still waiting
after 30 s and 40 s, 7.5 and 10 x ``network_timeout``; not kept as a test: it would only time a hang): on
loopback the proxy's kernel goes on acknowledging what the worker sends (into the proxy's socket buffer) and
its keepalive probes, so neither TCP keepalives nor ``tcp_user_timeout`` (``network_timeout``) ever fire, and
the server's ``idle_in_transaction_session_timeout`` ends the session on the server side only (its FATAL
message is swallowed by the proxy). The worker waits for an answer that never comes. What ends it is
``--tenant-timeout``: the worker is killed, the tenant reported timed-out and read back through a new
connection, and the run finishes with its report; or Ctrl-C. (Across a real black hole, where nothing
acknowledges, ``tcp_user_timeout`` and keepalives do fire after about ``network_timeout``; that is not what a
loopback test can show.)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import PG_URL, ROOT, fleet_config, make_project, pg_dsn
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.postgres

NETWORK_TIMEOUT = 4


class BlackHoleProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`black_hole` silences every connection open then."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.flows: list[dict] = []  # each: its two sockets, and whether it is silenced
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            flow = {"sockets": (client, server), "silent": False}
            with self.lock:
                self.flows.append(flow)
            thread = threading.Thread(target=self._pump, args=(flow,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _pump(self, flow: dict) -> None:
        client, server = flow["sockets"]
        peer = {client: server, server: client}
        while not self.stop.is_set():
            if flow["silent"]:  # read nothing, write nothing, close nothing
                time.sleep(0.05)
                continue
            ready, _, _ = select.select([client, server], [], [], 0.05)
            for sock in ready:
                if flow["silent"]:
                    break
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (client, server):
                        with contextlib.suppress(OSError):
                            s.close()
                    return
                peer[sock].sendall(data)

    def black_hole(self) -> int:
        """Silence every connection open now; returns how many."""
        with self.lock:
            for flow in self.flows:
                flow["silent"] = True
            return len(self.flows)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=2)
        for flow in self.flows:
            for sock in flow["sockets"]:
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def proxy() -> Iterator[BlackHoleProxy]:
    url = make_url(PG_URL)
    running = BlackHoleProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield running
    finally:
        running.close()


def _fleet(pg_fleet, tmp_path: Path, port: int) -> tuple[Path, list[str], Path]:
    """One PostgreSQL tenant, reached through the proxy: r1, then r2 that says it started (a file), idles 1 s
    inside its transaction (the test silences the connection meanwhile), then creates a table."""
    gate = tmp_path / "r2-started"
    ini = make_project(tmp_path / "proj", {
        "r1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "r2": f"""
            op.execute('SELECT 1')
            open({str(gate)!r}, 'w').close()
            time.sleep(1)
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(1)
    url = make_url(PG_URL).set(host="127.0.0.1", port=port, database="{tenant}")
    url = url.render_as_string(hide_password=False).replace("%7Btenant%7D", "{tenant}")
    config = fleet_config(tmp_path / "bh.toml", fleet.names, env="pg", url=url, alembic=ini,
                          extra=f"network_timeout = {NETWORK_TIMEOUT}\nidle_in_transaction_timeout = 3\n"
                                "retries = 0")
    return config, fleet.names, gate


def _start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "pg", "upgrade",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
        time.sleep(0.02)


def test_a_black_holed_migration_ends_at_the_tenant_timeout_with_a_report(pg_fleet, tmp_path):
    with proxy() as fault:
        config, names, gate = _fleet(pg_fleet, tmp_path, fault.port)
        report = tmp_path / "r.json"
        proc = _start(config, "--tenant-timeout", "6", "--report", str(report))
        _wait_for(gate, proc)
        assert fault.black_hole() >= 1
        started = time.monotonic()
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        took = time.monotonic() - started
    assert proc.returncode == 1, (out, err)
    assert took < 12, f"{took:.1f}s"
    [tenant] = json.loads(report.read_text())["tenants"]
    assert tenant["status"] == "timed-out", tenant
    assert tenant["to"] == "r1"  # read back through a new connection: r2 rolled back
    # On the server, the black-holed session was idle in its transaction: ended after idle_in_transaction_timeout
    # (3 s here), its locks with it, although its client never heard of it.
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        left = conn.execute("SELECT state FROM pg_stat_activity WHERE datname = %s", (names[0],)).fetchall()
    assert left == [], left


def test_ctrl_c_ends_a_serial_run_stuck_on_a_silent_connection(pg_fleet, tmp_path):
    """A serial run (one tenant, no timeout) migrates in this process. Ctrl-C interrupts the migration; its
    clean-up (the tenant lock's release) then waits on a silent connection too, and the second Ctrl-C must end
    that wait (it was only noted, and the process hung for good). The run is written up, exit 130."""
    with proxy() as fault:
        config, names, gate = _fleet(pg_fleet, tmp_path, fault.port)
        report = tmp_path / "r.json"
        proc = subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "pg", "upgrade",
                                 "--report", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_for(gate, proc)
        fault.black_hole()
        time.sleep(1.5)  # the worker is waiting on the silent connection
        started = time.monotonic()
        try:
            os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        took = time.monotonic() - started
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert took < 12, f"{took:.1f}s"
    [tenant] = json.loads(report.read_text())["tenants"]
    assert tenant["status"] == "failed" and tenant["error"].startswith("interrupted (Ctrl-C) while migrating")
