"""What the test modules share: the project's paths and revisions, the one way to write a fleet config, throwaway
Alembic projects, readers of SQLite files, and the one loopback webhook server.

Fixtures live in conftest.py (they use these); a test module imports from here, never from another test module
or from conftest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from tenants.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
HEAD = "0004_invoice_user_index"
DEMO_REVISIONS = ["0001_users", "0002_invoices", "0003_invoice_status", "0004_invoice_user_index"]
PG_URL = os.environ.get("TENANTS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


# --- configs -------------------------------------------------------------------------------------------------

def write_config(path: Path, body: str) -> Path:
    """A config file with exactly this (dedented) text: for tests about the config itself."""
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def fleet_config(path: Path, names: Sequence[str] | None, *, env: str = "test", url: str = "sqlite:///db/{tenant}.db",
                 alembic: Path = ALEMBIC_INI, tags: dict[str, list[str]] | None = None, extra: str = "") -> Path:
    """The one way the suite writes a fleet: one environment, its tenants (each with its tags when ``tags`` is
    given; no list when ``names`` is None, for a ``source`` in ``extra``), the Alembic project and fast retries;
    ``extra`` lines are appended (waves, retries, source, ...)."""
    if names is None:
        listed = None
    elif tags is None:
        listed = ", ".join(f'"{n}"' for n in names)
    else:
        listed = ", ".join(f'{{name = "{n}", tags = {json.dumps(tags.get(n, []))}}}' for n in names)
    body = (f'[environments.{env}]\nurl = "{url}"\n' + ("" if listed is None else f"tenants = [{listed}]\n")
            + f'alembic = "{alembic}"\nretry_backoff = 0.01\n' + textwrap.dedent(extra).strip())
    path.write_text(body.rstrip("\n") + "\n", encoding="utf-8")
    return path


def settings_for(path: Path, env: str = "test"):
    """The settings of one environment of a config, with no variables from the process environment."""
    return load_settings(path, env, environ={})


# --- SQLite tenants ------------------------------------------------------------------------------------------

def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(db: Path) -> str | None:
    if not db.exists():  # connecting would create it
        return None
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            return None
    return rows[0][0] if rows else None


# --- PostgreSQL (tests that use these carry @pytest.mark.postgres; conftest checks the fixtures) -------------

def pg_dsn(dbname: str = "postgres") -> str:
    url = make_url(PG_URL).set(drivername="postgresql", database=dbname)
    return url.render_as_string(hide_password=False)


def admin(sql: str) -> None:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(sql)


# --- throwaway Alembic projects ------------------------------------------------------------------------------

def make_project(root: Path, revisions: dict[str, str], env_py: str | None = None) -> Path:
    """An Alembic project of its own (not ours): ``alembic init``'s generic template, plus revisions.

    ``revisions`` maps a revision id to the body of its upgrade() (the downgrade is ``pass``); they chain
    in the given order. The generated env.py only knows ``sqlalchemy.url`` and builds its own engine, which
    is exactly the "any Alembic project" case the engine must drive.
    """
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([Path(sys.executable).parent / "alembic", "init", "migrations"], cwd=root, check=True,
                   capture_output=True)
    if env_py is not None:
        (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py), encoding="utf-8")
    down = None
    for i, (rev, body) in enumerate(revisions.items()):
        (root / "migrations" / "versions" / f"{i:03d}_{rev}.py").write_text(
            "import os, time\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n"
            f"def upgrade():\n{textwrap.indent(textwrap.dedent(body).strip() or 'pass', '    ')}\n\n"
            "def downgrade():\n    pass\n",
            encoding="utf-8",
        )
        down = rev
    return root / "alembic.ini"


def demo_copy(root: Path, revisions: dict[str, str] | None = None) -> Path:
    """A copy of this repository's Alembic project (alembic.ini, env.py, the demo revisions) with more revisions:
    ``revisions`` maps a file name (``0005_bad.py``) to its whole source, dedented."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ALEMBIC_INI, root / "alembic.ini")
    shutil.copytree(ROOT / "alembic", root / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in (revisions or {}).items():
        (root / "alembic" / "versions" / name).write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return root / "alembic.ini"


def failing_project(root: Path) -> Path:
    """Revision r2 creates a table, then fails for tenants whose database name contains 'bad'."""
    return make_project(root, {
        "r1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "r2": """
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            from alembic import context
            if 'bad' in context.config.get_main_option('sqlalchemy.url'):
                op.execute('SELECT * FROM no_such_table')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())


def fake_pool_project(root: Path, counter: Path, capacity: int, hold: float = 0.05) -> Path:
    """One revision that behaves like an elastic pool with room for ``capacity`` tenants at once: above it,
    it fails the way Azure SQL does, with a real pyodbc error carrying native error 10928. A tenant admitted
    holds its place for ``hold`` seconds."""
    counter.write_text("0 0 0")  # in flight now, the most ever admitted at once, refusals
    return make_project(root, {"p1": f"""
        import fcntl, pyodbc

        def change(delta):
            with open({str(counter)!r}, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                now, most, refused = map(int, f.read().split())
                admitted = not (delta > 0 and now >= {capacity})
                if admitted:
                    now += delta
                else:
                    refused += 1
                f.seek(0); f.truncate(); f.write(f"{{now}} {{max(most, now)}} {{refused}}")
                return admitted

        if not change(+1):
            raise pyodbc.OperationalError("42000", "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"
                "Resource ID : 1. The request limit for the elastic pool is {capacity} and has been reached. "
                "(10928) (SQLExecDirectW)")
        try:
            time.sleep({hold})
            op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))
        finally:
            change(-1)
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())


def guard_probe_project(root: Path, out: Path) -> Path:
    """A project whose one revision asks every guard about the demo schema and writes the answers to ``out``."""
    return make_project(root, {"probe": f"""
        import json
        from tenants import guards
        answers = {{
            "table": guards.has_table("users"), "no_table": guards.has_table("nope"),
            "column": guards.has_column("users", "email"), "no_column": guards.has_column("users", "nope"),
            "column_of_missing_table": guards.has_column("nope", "email"),
            "index": guards.has_index("users", "ux_users_email"), "no_index": guards.has_index("users", "nope"),
            "fk": guards.has_foreign_key("invoices", "fk_invoices_user_id_users"),
            "no_fk": guards.has_foreign_key("invoices", "nope"),
            "unique": guards.has_unique_constraint("invoices", "uq_invoices_number"),
        }}
        open({str(out)!r}, "w").write(json.dumps(answers))
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())


GUARD_ANSWERS = {"table": True, "no_table": False, "column": True, "no_column": False,
                 "column_of_missing_table": False, "index": True, "no_index": False, "fk": True, "no_fk": False,
                 "unique": True}


# --- a fake elastic-pool pressure source ---------------------------------------------------------------------

class Readings:
    """A fake pressure source: plays back readings, counting reads."""

    def __init__(self, *readings):
        self.readings, self.reads = list(readings), 0

    def read(self):
        self.reads += 1
        value = self.readings[min(self.reads, len(self.readings)) - 1]
        if isinstance(value, Exception):
            raise value
        return value


# --- the loopback webhook server -----------------------------------------------------------------------------

# A Slack-shaped secret path: none of it may ever appear in a warning.
SECRET_PATH = "/services/T0AAAAAAA/B0BBBBBBB/Xs3cr3tT0k3nXs3cr3tT0k3n"
SECRET_PARTS = ("T0AAAAAAA", "B0BBBBBBB", "Xs3cr3tT0k3nXs3cr3tT0k3n", "/services")


class _Handler(BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.path, dict(self.headers), body))
        if self.server.delay:
            self.server.release.wait(self.server.delay)  # released at teardown: the thread never outlives it
        answer = self.server.answer.replace(b"{path}", self.path.encode())
        try:
            self.send_response(self.server.status)
            for name, value in self.server.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except OSError:
            pass  # the client gave up (the timeout test)

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


class Webhook(ThreadingHTTPServer):
    """A chat webhook on 127.0.0.1: records every POST (path, headers, body) and answers ``status``/``answer``
    (``{path}`` in the answer is replaced by the request's path), after ``delay`` seconds if set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, dict, bytes]] = []
        self.status = 200
        self.answer = b"ok"
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.release = threading.Event()

    def url(self, path: str = SECRET_PATH) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up is what some tests do on purpose

    def payloads(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.received]


@contextlib.contextmanager
def serve_webhook() -> Iterator[Webhook]:
    """A running Webhook, shut down (and any delayed answer released) on the way out."""
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def slack_texts(payload: dict) -> str:
    """Every text of a Slack message, joined: what a reader of the channel can see."""
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts += [field["text"] for field in block.get("fields", [])]
        texts += [element["text"] for element in block.get("elements", [])]
    return "\n".join(texts)


def teams_card(payload: dict) -> dict:
    assert payload["type"] == "message"
    [attachment] = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    return card


def teams_lines(card: dict) -> list[str]:
    lines = []
    for element in card["body"]:
        if element["type"] == "RichTextBlock":
            lines.append("".join(run["text"] for run in element["inlines"]))
        else:
            lines.append(element["text"])
    return lines
