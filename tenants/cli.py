"""The ``tenants`` command: parse, call one library function from :mod:`tenants.api`, render the result.

Results go to stdout; diagnostics and errors to stderr. Every :class:`~tenants.errors.TenantsError` and every
usage error becomes one line on stderr and exit code 2, with no traceback (and no locals: a password is a
local). Exit codes: 0 all good, 1 some tenant failed, was skipped, locked or is not at head, 2 bad input.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tenants.config import DEFAULT_ENV, Settings, load_settings
from tenants.dialects import dialect_for
from tenants.engine.forkserver import start_early
from tenants.errors import TenantsError, UsageError
from tenants.lazy import lazy_module
from tenants.model import RESUMABLE, RunReport, TenantResult, counted
from tenants.output import terminal
from tenants.output.adopt import adopt_json, adopt_text
from tenants.output.check import check_github, check_json, check_markdown, check_text
from tenants.output.drift import drift_json, drift_lines, drift_markdown, drift_text
from tenants.output.drift import summary_line as drift_summary
from tenants.output.job_summary import markdown_summary
from tenants.output.junit import drift_junit, junit_xml, status_junit
from tenants.output.notify import Target, ci_run_url, notify, parse_target
from tenants.output.plan import plan_json, plan_markdown, plan_text
from tenants.runlog import ReportWriter, write_json
from tenants.secrets import scrub_shapes
from tenants.selection import Selection, parse_shard

# The verbs' library (and through it Alembic, the engines, the fan-out) loads when a command first uses it, not
# when the CLI starts: `tenants --help` and a command's usage errors answer without it (issue 13: start-up).
api = lazy_module("tenants.api")
plan_module = lazy_module("tenants.plan")

app = typer.Typer(
    name="tenants",
    help="Take one Alembic release to every tenant database: upgrade, status, downgrade one tenant, offline SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)


@dataclass(frozen=True)
class Context:
    """What the callback parsed, handed to every command through ``ctx.obj`` (no module-level state). A
    command's own options are its function's arguments, passed on as arguments: never stored here."""

    config: str | None
    env: str | None
    out: Console
    err: Console

    def settings(self) -> Settings:
        return load_settings(self.config, self.env)


@dataclass(frozen=True)
class Publish:
    """Where a run goes besides the terminal: the command's --junit, --summary-markdown and --notify."""

    junit: Path | None = None
    summary_markdown: Path | None = None
    notify: tuple[Target, ...] = ()


class Files:
    """The files a run was asked to write (--report, --junit, --summary-markdown). A full disk or an unwritable
    file is not a failed fleet (issue 11): a write that fails is one warning on stderr, at once, and the run goes
    on. At the end (:func:`_exit`) the run's own exit code stands; only a run that ended well exits 1, with a
    line saying the run was good and which file is missing, since the caller asked for it."""

    def __init__(self) -> None:
        self.failed: dict[str, tuple[Path, str]] = {}  # flag -> (path, why)
        self._warned: set[str] = set()

    def write(self, flag: str, path: Path | None, text: str) -> None:
        if path is None:
            return
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            self.fail(flag, path, err)

    def fail(self, flag: str, path: Path, err: OSError, final: bool = True) -> None:
        """``final``: the file is missing at the end (not a streamed write a later one may still make good)."""
        why = err.strerror or str(err)
        if flag not in self._warned:
            self._warned.add(flag)
            typer.echo(f"tenants: warning: {flag} {path}: cannot write it: {why}; the run goes on", err=True)
        if final:
            self.failed[flag] = (path, why)


def _exit(report: RunReport, files: Files) -> None:
    """The run's exit code; a run that ended well but could not write a file it was asked for exits 1, saying
    both."""
    if files.failed and report.ok:
        counts = ", ".join(f"{n} {status}" for status, n in report.counts.items()) or "no tenants"
        missing = " and ".join(f"{flag} {path}" for flag, (path, _) in files.failed.items())
        why = "; ".join(dict.fromkeys(why for _, why in files.failed.values()))
        typer.echo(f"tenants: error: the run ended well ({counts}) but {missing} could not be written: {why}",
                   err=True)
        raise typer.Exit(1)
    raise typer.Exit(0 if report.ok else 1)


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (CI logs, pipes, tests): no colour, and wide enough that tables do not wrap.
    width = None if stream.isatty() else max(120, int(os.environ.get("COLUMNS", "0") or 0))
    return Console(file=stream, stderr=stderr, width=width, highlight=False, soft_wrap=False)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", envvar="TENANTS_CONFIG", help="Configuration file (default: ./tenants.toml).")] = None,
    env: Annotated[str | None, typer.Option(
        "--env", "-e", envvar="TENANTS_ENV", help="Environment in the configuration (default: dev).")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Let INFO log lines through, e.g. Alembic's \"Running upgrade ...\" when env.py "
        "configures logging (fileConfig); without it only warnings and errors get through.")] = False,
) -> None:
    ctx.obj = Context(config, env, _console(), _console(stderr=True))
    if not verbose:
        _quiet_logs(ctx)


def _quiet_logs(ctx: typer.Context) -> None:
    """Keep INFO and DEBUG log records out of our output, for the duration of the command.

    An env.py that calls ``fileConfig(config.config_file_name)`` (``alembic init``'s template does, and its
    alembic.ini sets the ``alembic`` logger to INFO) prints Alembic's "Context impl ...", "Running upgrade ..."
    to stderr, in this process and in each worker that runs it, between our result lines. Setting levels or
    handlers beforehand does not help: fileConfig resets them (and dictConfig, basicConfig(force=True) too).
    ``logging.disable`` is a ceiling over every logger that no logging configuration lifts, so it works
    whatever env.py configures, without changing what env.py sees (replacing ``fileConfig`` or hiding
    ``config.config_file_name`` would). The fan-out's workers copy this process's ceiling
    (:func:`tenants.engine.fanout.process._init_worker`). Warnings and errors still get through.
    """
    previous = logging.root.manager.disable  # restored for a caller that runs the CLI in-process (tests)
    logging.disable(logging.INFO)
    ctx.call_on_close(lambda: logging.disable(previous))


def _command(fn):
    """Turn the library's errors into one line on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TenantsError as err:
            typer.echo(f"tenants: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper


TenantOpt = Annotated[list[str], typer.Option(
    "--tenant", "-t", help="Only this tenant (repeatable).", show_default=False)]
ExcludeOpt = Annotated[list[str], typer.Option(
    "--exclude", "-x", help="Leave out tenants matching this glob (repeatable).", show_default=False)]
TagOpt = Annotated[list[str], typer.Option("--tag", help="Only tenants with this tag (repeatable).",
                                           show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", metavar="K/N", help="Only shard K of N (a stable hash of the tenant name): N runners, K=1..N, "
    "cover the fleet exactly once.", show_default=False)]


def _check_format(output_format: str, formats: tuple[str, ...]) -> None:
    """``--format``: one of ``formats``, else one line and exit 2, before anything is read."""
    if output_format not in formats:
        raise UsageError(f"--format {output_format}: use {', '.join(formats[:-1])} or {formats[-1]}")


def _echo_report(output_format: str, report, renderers: dict[str, Callable]) -> None:
    """Print ``report`` with the renderer of ``output_format``: ``json`` renders data (printed as JSON), the
    others text that ends its own lines."""
    rendered = renderers[output_format](report)
    if output_format == "json":
        typer.echo(terminal.to_json(rendered))
    else:
        typer.echo(rendered, nl=False)


def _selection(tenant, exclude, tag, shard: str | None = None) -> Selection:
    return Selection(tuple(tenant or ()), tuple(exclude or ()), tuple(tag or ()),
                     parse_shard(shard) if shard is not None else None)


@app.command("list")
@_command
def list_(ctx: typer.Context, tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [],
          shard: ShardOpt = None, json: JsonOpt = False) -> None:
    """List the discovered tenants: name, URL (password masked), tags."""
    obj: Context = ctx.obj
    tenants, skipped = api.discover_all(obj.settings(), _selection(tenant, exclude, tag, shard))
    if json:
        typer.echo(terminal.tenants_json(tenants))
    else:
        obj.out.print(terminal.tenants_table(tenants))
    for name, why in skipped:  # databases discovery saw and leaves alone (Azure: master, not Online)
        typer.echo(f"not listed: {name}: {why}", err=True)


@app.command()
@_command
def status(ctx: typer.Context, tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [],
           shard: ShardOpt = None, json: JsonOpt = False) -> None:
    """Each tenant's revision against head. Exit 0 only if every selected tenant is at head (a database that is
    not online is listed as not verified; `verify` fails on it)."""
    obj: Context = ctx.obj
    report = api.status(obj.settings(), _selection(tenant, exclude, tag, shard))
    if json:
        typer.echo(terminal.to_json(report.to_dict()))
    else:
        obj.out.print(terminal.status_table(report))
        typer.echo(terminal.status_line(report))
    raise typer.Exit(0 if report.ok else 1)


@app.command("pin")
@_command
def pin_(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in plan, upgrade, status).",
                                        show_default=False)],
) -> None:
    """Keep a tenant out of fleet upgrades until `tenants unpin` (the pin lives in its database)."""
    obj: Context = ctx.obj
    api.pin(obj.settings(), tenant, reason)
    typer.echo(f"pinned {tenant}: {reason.strip()}")


@app.command()
@_command
def unpin(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant.", show_default=False)],
) -> None:
    """Release a pinned tenant: fleet upgrades take it again."""
    obj: Context = ctx.obj
    released = api.unpin(obj.settings(), tenant)
    typer.echo(f"unpinned {tenant}" if released else f"{tenant} was not pinned")


@app.command()
@_command
def history(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N rows.")] = 50,
    json: JsonOpt = False,
) -> None:
    """The tenant's audit trail: every revision the tool applied, undid or stamped there, when and by whom."""
    obj: Context = ctx.obj
    rows = api.tenant_history(obj.settings(), tenant, limit)
    if json:
        typer.echo(terminal.to_json({"tenant": tenant, "history": [
            {**row, "started_at": str(row["started_at"]), "finished_at": str(row["finished_at"])} for row in rows]}))
        return
    if not rows:
        typer.echo(f"{tenant}: no history yet")
        return
    for row in rows:
        line = (f"{str(row['finished_at'])[:19]}  {row['operation']:<9} {row['outcome']:<8} "
                f"{row['from_revision']} -> {row['to_revision']}  by {row['actor'] or '?'}"
                f"  run {row['run_id'][:12]}  commit {(row['git_commit'] or '?')[:12]}")
        typer.echo(line + (f"  {row['error']}" if row["error"] else ""))


@app.command()
@_command
def verify(
    ctx: typer.Context,
    tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [], shard: ShardOpt = None,
    run_report: Annotated[Path | None, typer.Option(
        "--report", help="The run's report: tenants it does not list are named as created since the run began.",
        dir_okay=False, show_default=False)] = None,
    junit: JunitOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Pinned tenants not at head fail too.")] = False,
    allow_offline: Annotated[bool, typer.Option(
        "--allow-offline", help="Databases that are not online (Azure: Paused, Scaling, ...) are listed as not "
        "verified but do not fail.")] = False,
    schema: Annotated[bool, typer.Option(
        "--schema", help="Also check each tenant's schema against the expected schema of its revision "
        "(`tenants drift`): a drifted tenant fails.")] = False,
) -> None:
    """After a deploy: discover the fleet afresh and check every tenant is at head. Exit 1 naming each that
    is not, and why (pinned tenants are listed, and fail only with --strict), and each database that is not
    online, which could not be verified (listed, and not failing, with --allow-offline)."""
    obj: Context = ctx.obj
    _check_report_path(junit, "--junit")
    verdict = api.verify(obj.settings(), _selection(tenant, exclude, tag, shard), run_report, strict=strict,
                         allow_offline=allow_offline, schema=schema)
    for line in terminal.verify_lines(verdict.status, verdict.ran, allow_offline):
        typer.echo(line)
    typer.echo(terminal.status_line(verdict.status))
    if verdict.drift is not None:
        for line in drift_lines(verdict.drift, matching=False, offline=False):  # verify_lines named those
            typer.echo(line)
        typer.echo(drift_summary(verdict.drift))
    files = Files()
    files.write("--junit", junit, status_junit(verdict.status, allow_offline, verdict.drift))
    if files.failed and verdict.ok:
        path, why = files.failed["--junit"]
        typer.echo(f"tenants: error: the fleet verified well but --junit {path} could not be written: {why}",
                   err=True)
    raise typer.Exit(0 if verdict.ok and not files.failed else 1)


def _run_and_render(obj: Context, run, total: int, report_path: Path | None, publish: Publish) -> None:
    """Stream results as they finish (a live bar on a terminal, a line each otherwise), then summarise.

    ``run(on_result, on_start, on_warning)`` runs it (:meth:`tenants.api.PreparedRun.run`). With ``--report``
    the report is written as the run goes (tenants.runlog): a killed run leaves one to resume from. A warning
    the run gives as it goes is on stderr at once, and not again at the end.
    """
    warned: list[str] = []  # said as the run went: not again at the end
    files = Files()
    streamed = _StreamedReport(report_path, files)
    on_start, record = streamed.start, streamed.add

    if sys.stdout.isatty():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=obj.err, transient=True) as progress:
            task = progress.add_task("tenants", total=total)

            def on_result(result: TenantResult) -> None:
                record(result)
                progress.console.print(terminal.result_line(result), markup=False, highlight=False)
                progress.advance(task)

            def on_warning(line: str) -> None:
                warned.append(line)
                progress.console.print(_warning(line), markup=False, highlight=False)

            report = run(on_result, on_start, on_warning)
    else:
        def on_line(result: TenantResult) -> None:
            record(result)
            typer.echo(terminal.result_line(result))

        def on_warning(line: str) -> None:
            warned.append(line)
            typer.echo(_warning(line), err=True)

        report = run(on_line, on_start, on_warning)
    Interrupts.noting_only()
    streamed.close(report)
    _finish(obj, report, report_path, publish, written=streamed.writer is not None, warned=warned, files=files)


class _StreamedReport:
    """``--report`` written as the run goes (:class:`tenants.runlog.ReportWriter`, which never raises); a write
    that fails is warned once through ``files``, and the run goes on."""

    def __init__(self, path: Path | None, files: Files) -> None:
        self.path, self.files = path, files
        self.writer: ReportWriter | None = None

    def start(self, header: dict) -> None:
        if self.path is not None:
            self.writer = ReportWriter(self.path, header)
            self._check(final=False)

    def add(self, result: TenantResult) -> None:
        if self.writer is not None:
            self.writer.add(result)
            self._check(final=False)

    def close(self, report: RunReport) -> None:
        if self.writer is not None:
            self.writer.close(report)
            self._check(final=True)

    def _check(self, final: bool) -> None:
        if self.writer is not None and self.writer.error is not None:
            self.files.fail("--report", self.writer.path, self.writer.error, final=final)


def _warning(line: str) -> str:
    """A pressure probe's line (tenants.engine.pressure) on stderr: named by the setting that turned it on."""
    return f"tenants: warning: pressure_limit: {line}"


def _publish(report: RunReport, report_file: str, publish: Publish, files: Files) -> None:
    """The run for people and CI: JUnit, the Markdown summary (to a file and $GITHUB_STEP_SUMMARY), webhooks."""
    if publish.junit is not None:
        files.write("--junit", publish.junit, junit_xml(report))
    markdown = markdown_summary(report, report_file=report_file)
    files.write("--summary-markdown", publish.summary_markdown, markdown)
    for warning in notify(report, publish.notify, link=ci_run_url(os.environ)) if publish.notify else ():
        typer.echo(f"tenants: warning: {warning}", err=True)
    _step_summary(markdown)


def _step_summary(markdown: str) -> None:
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:  # GitHub Actions: appended, as each step's summary file is shared by its commands
        try:
            with open(step_summary, "a", encoding="utf-8") as summary:
                summary.write(markdown + "\n")
        except OSError as err:
            typer.echo(f"tenants: warning: cannot write $GITHUB_STEP_SUMMARY ({step_summary}): {err.strerror}",
                       err=True)


def _finish(obj: Context, report: RunReport, report_path: Path | None, publish: Publish = Publish(),
            written: bool = False, warned: list[str] | None = None, files: Files | None = None) -> None:
    files = files or Files()
    if report_path is not None and not written:
        _write_report(report_path, report, files)
    _publish(report, str(report_path or "report.json"), publish, files)
    obj.out.print(terminal.summary_table(report))
    typer.echo(terminal.summary_line(report))
    for line in terminal.failures(report):
        typer.echo(line)
    for name, why in report.skipped_databases:
        typer.echo(f"not migrated: {name} ({why})", err=True)
    for line, times in report.pressure_errors:
        if line not in (warned or ()):
            typer.echo(_warning(counted(line, times)), err=True)
    if report_path is not None and "--report" not in files.failed:
        typer.echo(f"report written to {report_path}", err=True)
    _exit(report, files)


def _write_report(path: Path, report: RunReport, files: Files) -> None:
    try:
        write_json(path, report.to_dict())
    except OSError as err:
        files.fail("--report", path, err)


ReportOpt = Annotated[Path | None, typer.Option(
    "--report", help="Write the run as JSON to this file, as it goes (fields: see README).", dir_okay=False)]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit", help="Write JUnit XML, one test case per tenant (CI test reporters name the failing ones).",
    dir_okay=False, show_default=False)]
NotifyOpt = Annotated[list[str], typer.Option(
    "--notify", envvar="TENANTS_NOTIFY_URL", help="Post a summary to this incoming webhook when done "
    "(repeatable; slack:URL or teams:URL). A failing webhook is a warning, never a failed run.",
    show_default=False)]
SummaryOpt = Annotated[Path | None, typer.Option(
    "--summary-markdown", help="Write a Markdown summary (under 1 MiB), e.g. for a CI job summary; "
    "$GITHUB_STEP_SUMMARY gets one too when set.", dir_okay=False, show_default=False)]


def _check_report_path(report: Path | None, flag: str = "--report") -> None:
    """Fail before the run, not after it, when the file cannot be written. A file this check had to create is
    removed again: a run that then stops on other bad input must not leave an empty report behind (a later
    `report merge` or `--from-report` would take it for a report cut short)."""
    if report is None:
        return
    if not report.parent.resolve().is_dir():
        raise UsageError(f"{flag} {report}: folder {report.parent} does not exist")
    existed = report.exists()
    try:
        with report.open("a", encoding="utf-8"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {report}: cannot write it: {err.strerror}") from None
    if not existed:
        report.unlink(missing_ok=True)


def _check_not_resumed(report: Path | None, from_report: Path | None) -> None:
    """Refuse ``--report`` naming the file ``--from-report`` resumes. Handling it instead would mean either
    overwriting the earlier run's lines with the resumed run's (the tenants done before vanish from the file,
    and the next resume runs them again) or writing two runs as one report under one run id, start time and
    duration (a report that says more than is known). A resumed run's report is its own file."""
    if report is None or from_report is None:
        return
    if report.resolve() == from_report.resolve() or (report.exists() and from_report.exists()
                                                      and report.samefile(from_report)):
        raise UsageError(f"--report {report} is the report --from-report resumes: the resumed run would overwrite "
                         "it; write the resumed run's report to another file")


@app.command()
@_command
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [],
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-j", min=1, help="Tenants migrated at once (default: the environment's, else 4).",
        show_default=False)] = None,
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="Run every tenant whatever fails (default: stop starting new ones at the first "
        "failure).")] = False,
    max_failures: Annotated[int | None, typer.Option(
        "--max-failures", min=1, help="Stop starting new tenants after this many failures.",
        show_default=False)] = None,
    retries: Annotated[int | None, typer.Option(
        "--retries", min=0, help="Retries per tenant on transient errors (default: 3).", show_default=False)] = None,
    wave: Annotated[int | None, typer.Option(
        "--wave", min=1, help="Run only wave N of the environment's waves.", show_default=False)] = None,
    tenant_timeout: Annotated[float | None, typer.Option(
        "--tenant-timeout", help="Seconds a tenant may take; past it its worker is killed (the server rolls "
        "its transaction back) and the tenant reported timed-out.", show_default=False)] = None,
    report: ReportOpt = None,
    shard: ShardOpt = None,
    from_report: Annotated[Path | None, typer.Option(
        "--from-report", help="Resume: only the tenants this report lists with a status in --only, and those "
        "it does not list.", exists=False, dir_okay=False, show_default=False)] = None,
    only: Annotated[str, typer.Option(
        "--only", help="With --from-report: the statuses to run again.")] = ",".join(s.value for s in RESUMABLE),
    force: Annotated[bool, typer.Option(
        "--force", help="With --from-report: resume from a report of another environment, operation, target or "
        "revision-graph head (refused otherwise).")] = False,
    junit: JunitOpt = None,
    summary_markdown: SummaryOpt = None,
    notify_urls: NotifyOpt = [],
) -> None:
    """Bring every selected tenant to REVISION (default head), in parallel."""
    obj: Context = ctx.obj
    if keep_going and max_failures is not None:
        raise UsageError("--keep-going and --max-failures contradict each other: use one")
    _check_not_resumed(report, from_report)
    for path, flag in ((report, "--report"), (junit, "--junit"), (summary_markdown, "--summary-markdown")):
        _check_report_path(path, flag)
    # bad input stops here, before any tenant
    publish = Publish(junit, summary_markdown, tuple(parse_target(url) for url in notify_urls))
    settings: Settings | None = None
    try:
        settings = obj.settings()
        # The workers' forkserver first: its imports (half a second) overlap this process's loading of the
        # library and the discovery, instead of delaying the first tenant with work (api.prepare_upgrade
        # starts it too, for library callers; the second call finds it running).
        start_early(concurrency or settings.environment.concurrency,
                    dialect_for(settings.environment.dialect).worker_modules)
        # Neither flag: the default policy (the first failure, or with waves each wave's budget); see RunOptions.
        limit = None if keep_going else max_failures if max_failures is not None else api.FailureLimit.DEFAULT
        options = api.RunOptions(concurrency=concurrency, retries=retries, tenant_timeout=tenant_timeout,
                                 wave=wave, max_failures=limit)
        # Validate everything (report, revision, discovery, selection) before the first tenant is touched.
        try:
            prepared = api.prepare_upgrade(settings, revision, _selection(tenant, exclude, tag, shard),
                                           concurrency=concurrency, resume_from=from_report,
                                           only={s.strip() for s in only.split(",") if s.strip()}, force=force)
        except TenantsError as err:
            if report is not None and err.exit_code != 2:  # a runtime failure (discovery): the report says so
                _write_report(report, api.failed_run(settings, "upgrade", revision, err), Files())
            raise
        if prepared.resumed_from is not None:
            typer.echo(f"resuming from {from_report}: {len(prepared.tenants)} tenant(s) to run again", err=True)
        if not prepared.tenants:
            typer.echo("tenants: no tenant selected; nothing to do", err=True)
        for position, declared, why in prepared.empty_waves():
            typer.echo(f"tenants: warning: waves[{position}] ({declared.name}): {why}", err=True)
        prepared.check_wave(wave)
        waves = prepared.waves()
        if len(waves) > 1:
            typer.echo("waves: " + "; ".join(f"{i}. {w.name} ({len(t)})" for i, (w, t) in enumerate(waves, 1)),
                       err=True)
        # From here a signal is only noted: the run acts on it (it skips what it has not started), and the
        # summary, JUnit, report and notifications are written as after any interrupted run.
        Interrupts.noting_only()
    except KeyboardInterrupt as interrupt:  # the first signal, during config load, discovery or the checks
        _interrupted_before_run(obj, settings, revision, report, interrupt)
    _run_and_render(obj, functools.partial(prepared.run, options), len(prepared.tenants), report, publish)


def _interrupted_before_run(obj: Context, settings: Settings | None, revision: str, report: Path | None,
                            interrupt: KeyboardInterrupt) -> None:
    """A signal before the run started (config, discovery, the checks): nothing was run. Say so on stderr, and
    in the report when one was asked for (``--from-report`` refuses it: nothing to resume); exit 130 or 143."""
    why = f"interrupted ({str(interrupt) or 'Ctrl-C'}) before any tenant started; nothing was run"
    if report is not None:
        environment = settings if settings is not None else obj.env or os.environ.get("TENANTS_ENV") or DEFAULT_ENV
        _write_report(report, api.failed_run(environment, "upgrade", revision, why), Files())
    typer.echo(f"tenants: {why}", err=True)
    raise typer.Exit(1)  # main() turns it into 128 + the signal


FormatOpt = Annotated[str, typer.Option("--format", "-f", help="text, markdown or json.")]


@app.command()
@_command
def drift(
    ctx: typer.Context,
    tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [], shard: ShardOpt = None,
    output_format: FormatOpt = "text",
    junit: JunitOpt = None,
) -> None:
    """Each tenant's schema against the expected schema of its recorded revision, tenants grouped by
    fingerprint; each drifted one with its differences. Exit 1 on any drift (or a tenant that cannot be
    checked), 0 when every tenant matches."""
    obj: Context = ctx.obj
    _check_format(output_format, ("text", "markdown", "json"))
    _check_report_path(junit, "--junit")
    report = api.drift(obj.settings(), _selection(tenant, exclude, tag, shard))
    _echo_report(output_format, report, {"json": drift_json, "markdown": drift_markdown, "text": drift_text})
    files = Files()
    files.write("--junit", junit, drift_junit(report))
    if files.failed and report.ok:
        path, why = files.failed["--junit"]
        typer.echo(f"tenants: error: every schema matched but --junit {path} could not be written: {why}", err=True)
    raise typer.Exit(0 if report.ok and not files.failed else 1)


@app.command()
@_command
def plan(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [],
    shard: Annotated[str | None, typer.Option("--shard", metavar="K/N", help="Only shard K of N.",
                                                 show_default=False)] = None,
    sql: Annotated[bool, typer.Option("--sql", help="Attach the offline SQL of each cohort.")] = False,
    output_format: FormatOpt = "text",
    schema: Annotated[bool, typer.Option(
        "--schema", help="Also compare each tenant's schema with its revision's expected schema and list the "
        "drifted ones first (always on when the environment sets check_schema = true).")] = False,
) -> None:
    """What an upgrade would do: tenants grouped by current revision, the revisions each group gets.
    Exit 1 if a tenant is unreachable, unmanaged or at an unknown revision, or drifted with check_schema = true."""
    obj: Context = ctx.obj
    _check_format(output_format, ("text", "markdown", "json"))
    selection = _selection(tenant, exclude, tag, shard)
    result = plan_module.plan(obj.settings(), revision, selection, with_sql=sql, schema=schema)
    _echo_report(output_format, result, {"json": plan_json, "markdown": plan_markdown, "text": plan_text})
    raise typer.Exit(0 if result.ok else 1)


@app.command()
@_command
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(
        help="Target revision: an id, base, or -N (after `--`: `tenants downgrade -t acme -- -1`).")],
    tenant: Annotated[list[str], typer.Option(
        "--tenant", "-t", help="The one tenant to downgrade (required).", show_default=False)] = [],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    pin_reason: Annotated[str | None, typer.Option(
        "--pin", metavar="REASON", help="Then pin the tenant with this reason, so fleet upgrades leave it "
        "alone (asked on a terminal otherwise).", show_default=False)] = None,
    report: ReportOpt = None,
) -> None:
    """Downgrade exactly one tenant to REVISION, after showing what will be undone."""
    obj: Context = ctx.obj
    if len(tenant) != 1:
        raise UsageError(
            "downgrade takes exactly one --tenant NAME"
            + (f" (got {len(tenant)})" if tenant else "")
            + ": downgrades are per-tenant operations, never fleet-wide"
        )
    _check_report_path(report)
    settings = obj.settings()
    plan = api.plan_downgrade(settings, tenant[0], revision)
    if not plan.undo:
        typer.echo(f"tenant {plan.tenant.name} is already at {plan.target or 'base'}: nothing to undo")
        raise typer.Exit(0)
    typer.echo(f"downgrade {plan.tenant.name} ({settings.env_name}) from {','.join(plan.current)} "
               f"to {plan.target or 'base'}, undoing {len(plan.undo)} revision(s):")
    for line in plan.descriptions:
        typer.echo(f"  - {line}")
    if not yes:
        _confirm_downgrade()
    name = plan.tenant.name
    if pin_reason is not None:
        report_obj, pin_state = api.downgrade_and_pin(settings, plan, pin_reason)  # pins first: see there
    else:
        report_obj, pin_state = api.downgrade(settings, plan), None
    Interrupts.noting_only()
    for result in report_obj.results:
        typer.echo(terminal.result_line(result))
    if pin_state is None and report_obj.ok and not yes and sys.stdin.isatty() and typer.confirm(
            f"Pin {name} so fleet upgrades leave it at {plan.target or 'base'}?", default=True):
        pin_reason = typer.prompt("Reason")
        api.pin(settings, name, pin_reason)
        pin_state = "pinned"
    _say_pin(name, pin_state, pin_reason)
    _finish(obj, report_obj, report)


def _confirm_downgrade() -> None:
    if not sys.stdin.isatty():
        raise UsageError("refusing to downgrade without confirmation: stdin is not a terminal; pass --yes")
    if not typer.confirm("Proceed?", default=False):
        typer.echo("cancelled; nothing changed", err=True)
        raise typer.Exit(1)


def _say_pin(name: str, pin_state: str | None, reason: str | None) -> None:
    """What became of the pin of a downgraded tenant (tenants.api.downgrade_and_pin), in one line."""
    release = f"(release with `tenants unpin -t {name}`)"
    if pin_state == "pinned":
        typer.echo(f"pinned {name}: {(reason or '').strip()} {release}")
    elif pin_state == "released":
        typer.echo(f"{name}: nothing was undone, so the pin set for this downgrade is off again", err=True)
    elif pin_state == "kept":
        typer.echo(f"{name} stays pinned where its downgrade stopped {release}", err=True)


@app.command()
@_command
def stamp(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Revision to record (no migration runs).")],
    tenant: Annotated[list[str], typer.Option(
        "--tenant", "-t", help="Tenant to stamp (repeatable).", show_default=False)] = [],
    exclude: ExcludeOpt = [],
    tag: TagOpt = [],
    everyone: Annotated[bool, typer.Option("--all", help="Every tenant of the environment (less --exclude).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    report: ReportOpt = None,
) -> None:
    """Record REVISION in tenants without running migrations: adopt databases whose schema already is REVISION
    (an existing fleet, `unmanaged` databases). Lists the tenants and where each is now, then asks; without a
    terminal, --yes is needed unless every tenant was named with --tenant."""
    obj: Context = ctx.obj
    _check_report_path(report)
    settings = obj.settings()
    prepared = api.prepare_stamp(settings, revision, _selection(tenant, exclude, tag), everyone)
    target = prepared.run.target or "base"
    if not prepared.tenants:
        typer.echo(f"stamp {target}: no tenant selected; nothing changed", err=True)
        raise typer.Exit(0)
    if not (yes or sys.stdin.isatty() or not (everyone or tag or exclude)):
        raise UsageError(f"refusing to stamp {len(prepared.tenants)} tenant(s) chosen by --all/--tag/--exclude "
                         "without confirmation: stdin is not a terminal; see them with `tenants status` (with the "
                         "same --tag/--exclude), then pass --yes")
    typer.echo(f"stamp {target} on {len(prepared.tenants)} tenant(s) of {settings.env_name}, recording it "
               "without running any migration:")
    for where, names in prepared.groups().items():
        note = {"unmanaged": "tables, no version table", "base": "none recorded", "?": "unreadable"}.get(where)
        typer.echo(f"  from {where}{f' ({note})' if note else ''}: {', '.join(names)}")
    if not yes and sys.stdin.isatty() and not typer.confirm("Proceed?", default=False):
        typer.echo("cancelled; nothing changed", err=True)
        raise typer.Exit(1)
    report_obj = prepared.run.run(api.RunOptions(max_failures=None), lambda r: typer.echo(terminal.result_line(r)))
    _finish(obj, report_obj, report)


@app.command()
@_command
def adopt(
    ctx: typer.Context,
    tenant: TenantOpt = [], exclude: ExcludeOpt = [], tag: TagOpt = [],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Stamp each matched tenant at its revision.")] = False,
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """Adopt an existing fleet: match each `unmanaged` tenant's schema (tables, no version table) to the revision
    whose expected schema it is. Dry run by default; --yes stamps each matched tenant there (history row
    `adopted`). Tenants that match nothing are never touched. Exit 0 if every unmanaged tenant matched (or was
    adopted), 1 otherwise."""
    obj: Context = ctx.obj
    _check_format(output_format, ("text", "json"))
    plan = api.prepare_adopt(obj.settings(), _selection(tenant, exclude, tag))
    report = plan.run() if yes else plan.report()
    typer.echo(adopt_json(report) if output_format == "json" else adopt_text(report))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
@_command
def baseline(
    ctx: typer.Context,
    from_tenant: Annotated[str, typer.Option(
        "--from-tenant", help="The tenant whose schema the revision creates.", show_default=False)],
    message: Annotated[str, typer.Option("--message", "-m", help="The revision's message.", show_default=False)],
) -> None:
    """Write an Alembic revision that creates a tenant's schema (guarded, for review), on the current head: the
    first revision of a fleet whose schema predates the graph. Then `tenants adopt --yes` stamps the fleet."""
    obj: Context = ctx.obj
    path = api.baseline(obj.settings(), from_tenant, message)
    typer.echo(f"wrote {path}: review it, commit it, then `tenants adopt` matches the fleet to it")


@app.command()
@_command
def sql(
    ctx: typer.Context,
    revision_range: Annotated[str, typer.Argument(
        metavar="[FROM:]TO", help="Target revision, optionally with a starting one.")] = "head",
    tenant: Annotated[str | None, typer.Option(
        "--tenant", "-t", help="Start from this tenant's current revision (and use its URL).",
        show_default=False)] = None,
    dialect: Annotated[str | None, typer.Option(
        "--dialect", help="Render for this dialect instead of the environment's: mssql (T-SQL with GO), "
        "postgresql, sqlite.", show_default=False)] = None,
) -> None:
    """Print the offline SQL of the environment's dialect, for review."""
    obj: Context = ctx.obj
    typer.echo(api.sql(obj.settings(), revision_range, tenant, dialect), nl=False)


# --- check (issue 14) ------------------------------------------------------------------------------------

CHECK_FORMATS = ("text", "json", "github")


@app.command()
@_command
def check(
    ctx: typer.Context,
    revisions: Annotated[list[str] | None, typer.Argument(
        metavar="[REVISIONS]...", help="Revisions to check (ids or unique prefixes). Default: the revision files "
        "added or changed since the base branch.", show_default=False)] = None,
    everything: Annotated[bool, typer.Option("--all", help="Check every revision of the graph.")] = False,
    base: Annotated[str | None, typer.Option(
        "--base", metavar="REF", help="The base branch the default selection compares with (default: origin/main).",
        show_default=False)] = None,
    postgres: Annotated[str | None, typer.Option(
        "--postgres", metavar="URL", envvar="TENANTS_CHECK_PG_URL", help="Also run on scratch databases created on "
        "this PostgreSQL server (and dropped); the environment's own server is used when it is PostgreSQL.",
        show_default=False)] = None,
    output_format: Annotated[str, typer.Option(
        "--format", "-f", help="text, json, or github (annotations on the revision lines, then the text).")] = "text",
) -> None:
    """Prove revisions idempotent, reversible and safe for a busy pool before they are merged: the stairway
    (upgrade, downgrade, upgrade) and reruns on scratch databases (SQLite, and PostgreSQL when there is one),
    the offline T-SQL guarded and parseable, and the pool-safety lint. Exit 1 on any error finding."""
    obj: Context = ctx.obj
    _check_format(output_format, CHECK_FORMATS)
    report = api.check(obj.settings(), tuple(revisions or ()), everything=everything, base=base, postgres=postgres)
    _echo_report(output_format, report, {"json": check_json, "github": check_github, "text": check_text})
    _step_summary(check_markdown(report))
    raise typer.Exit(0 if report.ok else 1)


report_app = typer.Typer(help="Work with JSON run reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("merge")
@_command
def report_merge(
    ctx: typer.Context,
    reports: Annotated[list[Path], typer.Argument(help="Shard reports of one run.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the merged report.",
                                         dir_okay=False, show_default=False)],
    junit: JunitOpt = None,
    summary_markdown: SummaryOpt = None,
) -> None:
    """Merge shard reports (tenants upgrade --shard K/N --report ...) into one; exit 1 unless all ended well.

    The merged run's summary goes to $GITHUB_STEP_SUMMARY (when set) and --summary-markdown, its JUnit to
    --junit: the same as one unsharded run's."""
    for path, flag in ((output, "--output"), (junit, "--junit"), (summary_markdown, "--summary-markdown")):
        _check_report_path(path, flag)
    merged = api.merge_reports(reports)
    files = Files()
    try:
        write_json(output, merged.to_dict())
    except OSError as err:
        files.fail("--output", output, err)
    _publish(merged, str(output), Publish(junit, summary_markdown), files)
    counts = ", ".join(f"{n} {status}" for status, n in merged.counts.items()) or "no tenants"
    typer.echo(f"merged {len(reports)} report(s), {len(merged.results)} tenants: {counts}"
               + ("" if merged.complete else " (some reports were cut short)"))
    _exit(merged, files)


@report_app.command("notify")
@_command
def report_notify(
    ctx: typer.Context,
    reports: Annotated[list[Path] | None, typer.Argument(
        help="Reports of one run (shards are merged); none: post --message alone.", show_default=False)] = None,
    message: Annotated[str | None, typer.Option(
        "--message", "-m", help="A line posted with the summary (e.g. which CI job failed); alone when there is "
        "no report (a deploy that failed before any tenant ran).", show_default=False)] = None,
    notify_urls: NotifyOpt = [],
) -> None:
    """Post a run's summary (or a message) to the webhooks, e.g. from a CI job that runs only on failure.

    In GitHub Actions the message links to the run's page. A failing webhook is a warning (exit 0)."""
    targets = [parse_target(url) for url in notify_urls]
    warnings = api.notify(targets, reports or (), message, link=ci_run_url(os.environ))
    for warning in warnings:
        typer.echo(f"tenants: warning: {warning}", err=True)
    typer.echo(f"posted to {len(targets) - len(warnings)} of {len(targets)} webhook(s)")


class Interrupts:
    """The handler of SIGINT and SIGTERM for a whole command: SIGTERM (what a cancelled CI job, ``kill`` or a
    container stop sends) is handled like Ctrl-C, and the command exits ``128 + signal``: 130, or 143.

    The first signal raises KeyboardInterrupt, as Ctrl-C does by default: it stops what is going on (config
    load, discovery; ``upgrade`` then says so, and writes a report saying so when one was asked for). Once a run
    is about to start, signals are only noted (:meth:`noting_only`): the run installs handlers of its own for its
    duration (tenants.engine.fanout.noting_signals: between waves, in each fan-out, and a serial run's migration
    the only place a signal raises), which tell this one through :meth:`note`; the run acts on them (starts
    nothing more, skips the rest). Later signals, and any once the run is over and its report, summary, JUnit
    and notifications are being written, are only noted: an interrupted run's results are worth writing, and a
    cancelled GitHub job sends SIGINT, then SIGTERM 7.5 s later (then SIGKILL).

    Exit code: an interrupted command exits 130 (SIGINT) or 143 (SIGTERM), whatever its tenants did, like a
    shell's: the run did not do what it was asked, and CI shows it as stopped rather than as a failed fleet.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.quiet = False

    def __call__(self, signum: int, frame: object) -> None:
        self.note(signum)
        if len(self.received) == 1 and not self.quiet:
            # Its text names the signal for the report (tenants.engine.fanout.serial); Ctrl-C's is empty.
            raise KeyboardInterrupt("" if signum == signal.SIGINT else signal.Signals(signum).name)

    def note(self, signum: int) -> None:
        self.received.append(signum)

    def exit_code(self, code: int) -> int:
        return 128 + self.received[0] if self.received else code

    @staticmethod
    def noting_only() -> None:
        """Signals from now on are only noted (the process's handler, if it is ours): the run is about to start,
        and notes them itself (tenants.engine.fanout.noting_signals), or it is over and being written up."""
        handler = signal.getsignal(signal.SIGTERM)
        if isinstance(handler, Interrupts):
            handler.quiet = True


@contextlib.contextmanager
def _handling(interrupts: Interrupts) -> Iterator[None]:
    """``interrupts`` handles SIGINT and SIGTERM meanwhile (only the main thread can install handlers)."""
    # Started with Ctrl-C ignored (`nohup`, a background job): it stays ignored; SIGTERM is still ours.
    ours = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    if threading.current_thread() is not threading.main_thread():
        ours = []
    previous = {sig: signal.signal(sig, interrupts) for sig in ours}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # Interrupted: this process is on its way out with 128 + signal; one more signal must not turn that
            # into a KeyboardInterrupt at the interpreter's exit (a third Ctrl-C is harmless).
            handler = signal.SIG_IGN if interrupts.received else handler
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Usage errors are one line, like every other bad input."""
    # azure-identity logs multi-line warnings (every credential it tried) on failure; our one line says it.
    logging.getLogger("azure").setLevel(logging.ERROR)
    command = typer.main.get_command(app)
    interrupts = Interrupts()
    try:
        with _handling(interrupts):
            code = command.main(args=argv, prog_name="tenants", standalone_mode=False)
    except typer.TyperException as err:  # Typer's (vendored click) usage errors: bad option, missing argument
        message = err.format_message()
        if message:  # empty: `tenants` alone, which has printed the help already
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            if re.fullmatch(r"No such option: -\d+", message):
                hint = "; a relative revision goes after `--`, e.g. `tenants downgrade -t NAME -- -1`"
            typer.echo(f"tenants: error: {message}{hint}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("tenants: aborted", err=True)
        sys.exit(interrupts.exit_code(130))
    except BrokenPipeError:  # `tenants list | head -1`
        sys.stderr.close()
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a traceback (locals hold secrets)
        first = str(err).splitlines()[0] if str(err) else ""
        # No secret is known here (the settings may not even have loaded): mask what has the shape of one.
        typer.echo(f"tenants: internal error: {type(err).__name__}: {scrub_shapes(first)} (please report it)",
                   err=True)
        sys.exit(1)
    sys.exit(interrupts.exit_code(code if isinstance(code, int) else 0))
