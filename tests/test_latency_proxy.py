"""scripts/latency_proxy.py, the benchmark's stand-in for netem: real PostgreSQL connections through it are
counted (logins, frontend messages, round trips) and delayed per chunk, each way, without serializing them."""

from __future__ import annotations

import importlib.util
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from helpers import PG_URL, ROOT
from sqlalchemy.engine import make_url


def _load():
    """scripts/ is not a package: load the module from its path."""
    spec = importlib.util.spec_from_file_location("latency_proxy", ROOT / "scripts" / "latency_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


latency_proxy = _load()


def _upstream() -> str:
    url = make_url(PG_URL)
    return f"{url.host or '127.0.0.1'}:{url.port or 5432}"


def _connect(proxy, **kw) -> psycopg.Connection:
    url = make_url(PG_URL)
    # sslmode=disable: the proxy only reads framing it can see (and a server with TLS on would encrypt it).
    return psycopg.connect(host="127.0.0.1", port=proxy.port, user=url.username or "postgres",
                           password=url.password, dbname=url.database or "postgres", sslmode="disable", **kw)


def _upstream_database() -> str:
    return make_url(PG_URL).database or "postgres"


def test_a_startup_packet_naming_a_database_is_counted_under_it():
    startup = b"user\0app\0database\0tenant_7\0application_name\0tenants\0\0"
    packet = struct.pack("!II", 8 + len(startup), 196608) + startup
    parser = latency_proxy.FrontendParser()
    assert parser.feed(packet) == ["startup"] and parser.database == "tenant_7"


@pytest.mark.postgres
def test_one_connection_is_one_login_and_a_select_one_query_message(pg_available):
    with latency_proxy.LatencyProxy(_upstream()) as proxy:
        with _connect(proxy, autocommit=True) as conn:
            login = proxy.stats()
            assert login["connections"] == 1
            assert login["by_type"] == {"startup": 1}  # sslmode=disable: no SSLRequest first
            assert login["round_trips"] == 0  # the startup packet is the connection's first send
            assert login["logins_by_database"] == {_upstream_database(): 1}

            proxy.reset()
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
            query = proxy.stats()
            # No parameters: psycopg sends one simple Query; one exchange with the server.
            assert query == {**query, "connections": 0, "messages": 1, "round_trips": 1, "by_type": {"Q": 1}}

            proxy.reset()
            assert conn.execute("SELECT %s::int", (2,)).fetchall() == [(2,)]
            extended = proxy.stats()  # parameters: the extended protocol, still one exchange
            assert extended["by_type"] == {"P": 1, "B": 1, "D": 1, "E": 1, "S": 1}
            assert extended["round_trips"] == 1
        deadline = time.monotonic() + 5
        while proxy.stats()["by_type"].get("X") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.stats()["by_type"].get("X") == 1  # closing sends Terminate


@pytest.mark.postgres
def test_a_round_trip_takes_twice_the_delay(pg_available):
    with latency_proxy.LatencyProxy(_upstream(), delay_ms=50) as proxy, _connect(proxy, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchall()
        assert time.perf_counter() - started >= 0.100


@pytest.mark.postgres
def test_concurrent_connections_are_delayed_side_by_side(pg_available):
    """8 connections at once, two exchanges each (the login, the SELECT) at 50 ms each way: about 0.2 s
    together; one after the other they would take 8 times that."""
    def one(_):
        with _connect(proxy, autocommit=True) as conn:
            conn.execute("SELECT pg_sleep(0)").fetchall()

    with latency_proxy.LatencyProxy(_upstream(), delay_ms=50) as proxy:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))
        elapsed = time.perf_counter() - started
        stats = proxy.stats()
    assert stats["connections"] == 8
    assert 0.2 <= elapsed < 1.2


def test_the_framing_is_parsed_across_chunk_boundaries():
    ssl = struct.pack("!II", 8, 80877103)
    startup = struct.pack("!II", 17, 196608) + b"user\0pg\0\0"
    query = b"Q" + struct.pack("!I", 13) + b"SELECT 1\0"
    stream = ssl + startup + query + query + b"X" + struct.pack("!I", 4)
    parser = latency_proxy.FrontendParser()
    names = [name for i in range(0, len(stream), 3) for name in parser.feed(stream[i:i + 3])]
    assert names == ["ssl", "startup", "Q", "Q", "X"]
    assert parser.database == "pg"  # no database named: the user's name, as the server takes it

    tls = latency_proxy.FrontendParser()
    assert tls.feed(ssl) == ["ssl"]
    assert tls.feed(b"\x16\x03\x01\x02\x00" + b"\0" * 40) == [] and tls.opaque  # a TLS ClientHello


@pytest.mark.parametrize("listen", ["0.0.0.0:6543", "192.168.1.10:6543", "[::]:6543", "localhost:6543",
                                    "example.com:6543"])
def test_refuses_to_listen_beyond_loopback(listen):
    with pytest.raises(ValueError, match="only 127.0.0.1 or ::1"):
        latency_proxy.LatencyProxy("127.0.0.1:5432", listen=listen)


def test_the_script_refuses_too(capsys):
    with pytest.raises(SystemExit) as exc:
        latency_proxy.main(["--listen", "0.0.0.0:6543"])
    assert exc.value.code == 2
    assert "refusing to listen on '0.0.0.0'" in capsys.readouterr().err
