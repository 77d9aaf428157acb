#!/usr/bin/env python3
"""A loopback TCP proxy that adds latency to every chunk, and counts PostgreSQL logins, messages and round trips.

Kernel netem (`tc qdisc ... netem delay`) is not available on the dev machines (no CAP_NET_ADMIN, no sch_netem),
hence this: the benchmark points its clients at the proxy to see what a remote server's latency does to them.

Every chunk read from one side is written to the other side `--delay-ms` later, in each direction: order is kept
per direction, a chunk is delayed rather than the stream throttled (a reader queues chunks with their due time,
a writer sends each when it is due), and each connection has its own pair of pumps, so concurrent connections
never wait for each other. The TCP handshake itself is not delayed (the proxy accepts locally): on a real link
each login costs one more round trip for it, and TLS more.

Counted on the client -> server stream, whose PostgreSQL framing is parsed (frontend protocol 3.0):
- connections: connections accepted (logins, for a PostgreSQL client); open_connections is a gauge (open now);
- messages: frontend messages. The first ones (startup packet, SSLRequest, GSSENCRequest, CancelRequest) have no
  type byte, only an int32 length; every later one is a type byte and an int32 length. `by_type` splits them
  (the untyped ones under their name: "startup", "ssl", "gssenc", "cancel");
- round_trips: times the client sent data after having received data from the server on that connection, i.e.
  direction switches client-after-server: what the latency multiplies (a connection's first send is not one,
  its closing Terminate is);
- tls_connections: connections whose stream turned into TLS after an SSLRequest (their messages are not
  counted: the framing is encrypted);
- logins_by_database: startup packets by the database they name (the user's name when they name none), so
  that logins to tenant databases are told from others (discovery's, to the maintenance database).

Library:

    proxy = LatencyProxy("127.0.0.1:5432", delay_ms=10).start()   # a background thread runs its event loop
    ... connect to 127.0.0.1:{proxy.port} ...
    proxy.stats()   # {"connections": .., "messages": .., "round_trips": .., ...}
    proxy.reset()   # counters back to zero (connections still open keep their parsing state)
    proxy.stop()    # or: with LatencyProxy(...) as proxy: ...

Script (prints the counters as JSON on SIGUSR1, and when stopped by Ctrl-C or SIGTERM):

    python scripts/latency_proxy.py --listen 127.0.0.1:6543 --upstream 127.0.0.1:5432 --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import struct
import sys
import threading
from collections import Counter

CHUNK = 65536
LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
# Request codes of the untyped first messages (the protocol version 3.0 is the startup packet's).
UNTYPED = {80877103: "ssl", 80877104: "gssenc", 80877102: "cancel"}


def split_hostport(text: str) -> tuple[str, int]:
    """'127.0.0.1:5432', '[::1]:5432' or 'localhost:5432' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def loopback_only(host: str) -> str:
    """The listen address, if it is 127.0.0.1 or ::1; anything else (0.0.0.0, a LAN address, a name) is refused:
    the proxy forwards to a database without any authentication of its own."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address not in LOOPBACK:
        raise ValueError(f"refusing to listen on {host!r}: the proxy binds only 127.0.0.1 or ::1")
    return str(address)


class FrontendParser:
    """Splits one connection's client -> server bytes into PostgreSQL frontend messages (names only)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.startup = True  # the next message is untyped (int32 length first)
        self.opaque = False  # TLS (or GSS) after an SSLRequest: no more framing to read
        self.database: str | None = None  # named by the startup packet, once parsed

    def feed(self, data: bytes) -> list[str]:
        if self.opaque:
            return []
        self.buffer += data
        names: list[str] = []
        while (name := self._next()) is not None:
            names.append(name)
        return names

    def _next(self) -> str | None:
        buf = self.buffer
        if self.startup and buf and buf[0] != 0:  # a length < 16 MB starts with 0: this is a TLS record
            self.opaque = True
            self.buffer.clear()
            return None
        header = 4 if self.startup else 5
        if len(buf) < header:
            return None
        length = struct.unpack_from("!I", buf, header - 4)[0]
        end = length + header - 4
        if len(buf) < end:
            return None
        if self.startup:
            code = struct.unpack_from("!I", buf, 4)[0] if length >= 8 else 0
            name = UNTYPED.get(code, "startup")
            self.startup = name in ("ssl", "gssenc")  # after those the real startup packet follows
            if name == "startup":  # protocol version, then parameter names and values, each NUL-terminated
                words = bytes(buf[8:end]).split(b"\0")
                params = dict(zip(words[0::2], words[1::2], strict=False))
                self.database = (params.get(b"database") or params.get(b"user") or b"").decode(errors="replace")
        else:
            name = chr(buf[0])
        del buf[:end]
        return name


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.connections = self.round_trips = self.tls_connections = 0
            self.open = getattr(self, "open", 0)  # a gauge, not a counter: connections open now
            self.bytes_to_server = self.bytes_to_client = 0
            self.by_type: Counter[str] = Counter()
            self.logins_by_database: Counter[str] = Counter()

    def snapshot(self) -> dict:
        with self.lock:
            return {"connections": self.connections, "open_connections": self.open,
                    "messages": sum(self.by_type.values()),
                    "round_trips": self.round_trips, "tls_connections": self.tls_connections,
                    "bytes_to_server": self.bytes_to_server, "bytes_to_client": self.bytes_to_client,
                    "by_type": dict(sorted(self.by_type.items())),
                    "logins_by_database": dict(sorted(self.logins_by_database.items()))}


class _Connection:
    """One proxied connection: two delayed pumps and the round-trip state they share."""

    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.parser = FrontendParser()
        self.server_spoke = False  # data was delivered to the client since it last sent

    def client_sent(self, data: bytes) -> None:
        stats = self.proxy._stats
        was_opaque = self.parser.opaque
        names = self.parser.feed(data)
        with stats.lock:
            stats.bytes_to_server += len(data)
            stats.by_type.update(names)
            if "startup" in names:
                stats.logins_by_database[self.parser.database or ""] += 1
            if self.server_spoke:
                stats.round_trips += 1
            if self.parser.opaque and not was_opaque:
                stats.tls_connections += 1
        self.server_spoke = False

    def client_received(self, data: bytes) -> None:
        with self.proxy._stats.lock:
            self.proxy._stats.bytes_to_client += len(data)
        self.server_spoke = True

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_read, on_written) -> None:
        """Copy reader -> writer, each chunk written `delay` after it was read. The reading goes on while a chunk
        waits, so the delay adds latency, never a cap on throughput."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK):
                    if on_read:
                        on_read(data)
                    queue.put_nowait((loop.time() + self.proxy.delay, data))
            finally:
                queue.put_nowait(None)

        async def write() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                if on_written:
                    on_written(data)
            if writer.can_write_eof():
                writer.write_eof()  # half-close, as the sender did

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading


class LatencyProxy:
    """See the module docstring. `upstream` is 'HOST:PORT' or a (host, port) pair."""

    def __init__(self, upstream: str | tuple[str, int], delay_ms: float = 0.0, listen: str = "127.0.0.1:0") -> None:
        self.upstream = split_hostport(upstream) if isinstance(upstream, str) else tuple(upstream)
        host, port = split_hostport(listen)
        self.listen = (loopback_only(host), port)
        self.delay = delay_ms / 1000.0
        self.port: int | None = None
        self._stats = _Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._pumps: set[asyncio.Future] = set()  # of the open connections (the event loop's thread only)

    # --- the API ---------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        return self._stats.snapshot()

    def reset(self) -> None:
        self._stats.reset()

    def start(self) -> LatencyProxy:
        """Listen, and serve from a daemon thread running its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._listen())
            except BaseException as err:  # noqa: BLE001 (handed to the starting thread)
                failure.append(err)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the event loop's side -------------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server:
            self._server.close()
        for task in self._pumps:  # the connections' handlers then close both sides and return
            task.cancel()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def serve_forever(self) -> None:
        await self._listen()
        async with self._server:
            await self._server.serve_forever()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            await self._proxy(client_reader, client_writer)
        except asyncio.CancelledError:  # the proxy stops (Python 3.11's stream callback chokes on a cancelled
            client_writer.close()       # handler, so it ends normally)

    async def _proxy(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        with self._stats.lock:
            self._stats.connections += 1
            self._stats.open += 1
        try:
            await self._forward(client_reader, client_writer)
        finally:
            with self._stats.lock:
                self._stats.open -= 1

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        pumps = [asyncio.ensure_future(conn.pump(client_reader, server_writer, conn.client_sent, None)),
                 asyncio.ensure_future(conn.pump(server_reader, client_writer, None, conn.client_received))]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)  # a side reset: close both
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            for writer in (server_writer, client_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:6543", help="HOST:PORT, loopback only (127.0.0.1:6543)")
    p.add_argument("--upstream", default="127.0.0.1:5432", help="HOST:PORT of the server (127.0.0.1:5432)")
    p.add_argument("--delay-ms", type=float, default=10.0, help="delay of every chunk, each direction (10)")
    args = p.parse_args(argv)
    try:
        proxy = LatencyProxy(args.upstream, args.delay_ms, args.listen)
    except ValueError as err:
        p.error(str(err))

    def show(*_):
        print(json.dumps(proxy.stats()), flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, show)
        task = asyncio.ensure_future(proxy.serve_forever())
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await asyncio.sleep(0)
        while proxy.port is None and not task.done():
            await asyncio.sleep(0.01)
        if proxy.port is not None:
            print(f"latency proxy: {proxy.listen[0]}:{proxy.port} -> {args.upstream}, +{args.delay_ms:g} ms each way",
                  file=sys.stderr, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    show()


if __name__ == "__main__":
    main()
