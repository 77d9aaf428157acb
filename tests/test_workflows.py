"""The GitHub Actions workflows, checked here so a mistake breaks the build, not a production deploy.

- every workflow and the repository's own composite action validate against GitHub's schemas
  (check-jsonschema's vendored copies);
- zizmor, the Actions security linter, finds nothing at its default level;
- every ``tenants …`` command line in a ``run:`` script parses with the real CLI: the subcommand exists, every
  option exists and takes the value given (a renamed option fails here);
- the deploy graph has no path to a tenant-changing command that skips the approval;
- every job that connects to an environment's databases installs Microsoft's ODBC Driver 18 and checks for it
  before its first ``tenants`` command (GitHub's ubuntu-24.04 image has no SQL Server driver);
- every action is pinned to the commit of the release its comment names, as checked by hand (``VERIFIED_PINS``).
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml
from helpers import ROOT

from tenants.cli import app

WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
# The repository's own composite actions (`uses: ./.github/actions/NAME`).
ACTIONS = sorted([*(ROOT / ".github" / "actions").glob("*/action.yml"),
                  *(ROOT / ".github" / "actions").glob("*/action.yaml")])
# Commands that change a tenant database: they may only run after the environment's approval.
WRITES = {"upgrade", "downgrade", "stamp", "pin", "unpin"}
APPROVAL = "${{ inputs.environment }}"  # the GitHub environment with the required reviewers

# What the shell variables of the run scripts hold at run time (samples of the right shape), so the parse
# checks types too: a shard must look like K/N, a concurrency like a number.
SAMPLES = {
    "TARGET": ["head"], "SHARD": ["3/8"], "SHARD_INDEX": ["3"], "CONCURRENCY": ["2"], "TENANT_TIMEOUT": ["3600"],
    "TENANT": ["acme"], "REVISION": ["-1"], "REASON": ["customer asked to roll back invoices"],
    "TENANTS_ENV": ["production"], "from": ["0004_invoice_user_index"], "message": ["deploy failed"],
    "BASE_SHA": ["3d3c42e5aac5ba805825da76410c181273ba90b1"],
}
# Bash arrays ("${resume[@]}"): every command is parsed with each of their forms, empty included.
ARRAYS = {
    "resume": [[], ["--from-report", "resume.json"]],
    "reports": [["reports/shard-1.json"], ["reports/shard-1.json", "reports/shard-2.json"]],
    "given": [[], ["--report", "merged.json"]],
}
# A word in command position: after these, or after VAR=value assignments.
STARTERS = {";", "&&", "||", "|", "(", "$(", "$", "{", "!", "then", "else", "do", "time", "exec", "command"}
CONTROL = {";", "&&", "||", "|", ">", ">>", "<", "&", ")", "("}


def load(path: Path) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); the workflows never need it here.
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_scripts(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if "run" in step:
                yield job_id, step["run"]


def tenants_commands(script: str) -> list[list[str]]:
    """Each ``tenants …`` invocation in a bash script, as argv after ``tenants``, variables still unexpanded."""
    joined = re.sub(r"\\\n\s*", " ", script)  # line continuations
    commands = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.wordchars += "$@{}[]"
        # (shlex drops a trailing "# comment"; a "#" inside a word, as in ${#a[@]}, stays in the word)
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if not _command_position(tokens, i):
                continue
            if token.rsplit("/", 1)[-1] == "tenants":  # tenants, .venv/bin/tenants
                start = i + 1
            elif re.fullmatch(r"(.*/)?python3?(\.\d+)?", token) and tokens[i + 1:i + 3] == ["-m", "tenants"]:
                start = i + 3
            else:
                continue
            argv = []
            for arg in tokens[start:]:
                if arg in CONTROL:
                    break
                argv.append(arg)
            commands.append(argv)
    return commands


def _command_position(tokens: list[str], i: int) -> bool:
    j = i - 1
    while j >= 0 and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[j]):  # FOO=bar tenants ...
        j -= 1
    return j < 0 or tokens[j] in STARTERS


def expansions(argv: list[str]) -> list[list[str]]:
    """argv with its variables replaced by samples: one list per combination of the arrays' forms."""
    arrays = sorted({m.group(1) for arg in argv for m in [re.fullmatch(r"\$\{(\w+)\[@\]\}", arg)] if m})
    for name in arrays:
        assert name in ARRAYS, f"no sample forms for the array ${{{name}[@]}}: add them to ARRAYS"
    combos: list[dict[str, list[str]]] = [{}]
    for name in arrays:
        combos = [{**c, name: form} for c in combos for form in ARRAYS[name]]
    return [expand(argv, combo) for combo in combos]


def expand(argv: list[str], arrays: dict[str, list[str]] | None = None) -> list[str]:
    out = []
    for arg in argv:
        array = re.fullmatch(r"\$\{(\w+)\[@\]\}", arg)
        if array:
            out += (arrays or {}).get(array.group(1), ARRAYS.get(array.group(1), [[]])[-1])
            continue
        whole = re.fullmatch(r"\$\{?(\w+)\}?", arg)
        if whole:
            assert whole.group(1) in SAMPLES, f"no sample value for ${whole.group(1)}: add one to SAMPLES"
            out += SAMPLES[whole.group(1)]
            continue

        def one(m: re.Match[str]) -> str:
            assert m.group(1) in SAMPLES, f"no sample value for ${m.group(1)}: add one to SAMPLES"
            return SAMPLES[m.group(1)][0]

        out.append(re.sub(r"\$\{?(\w+)\}?", one, arg))
    return out


def parse(argv: list[str]) -> tuple[str, ...]:
    """Parse argv as the real `tenants` would (types, required arguments, unknown options), without running
    anything; return the subcommand path, e.g. ("report", "merge")."""
    command, name, parent, path = typer.main.get_command(app), "tenants", None, []
    args = list(argv)
    while True:
        ctx = command.make_context(name, args, parent=parent)
        if not hasattr(command, "resolve_command"):
            return tuple(path)
        name, command, args = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        parent = ctx
        path.append(name)


ALL_COMMANDS = [(path.name, job, argv) for path in FILES for job, script in run_scripts(load(path))
                for argv in tenants_commands(script)]


def test_the_workflows_are_found():
    assert [p.name for p in FILES] == ["ci.yml", "deploy-environment.yml", "deploy.yml", "downgrade.yml"]
    assert [p.parent.name for p in ACTIONS] == ["install-tenants-azure"]


@pytest.mark.parametrize("path", FILES + ACTIONS, ids=lambda p: p.relative_to(ROOT / ".github").as_posix())
def test_workflow_matches_githubs_schema(path):
    schema = "vendor.github-actions" if path in ACTIONS else "vendor.github-workflows"
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing():
    zizmor = shutil.which("zizmor") or str(Path(sys.executable).parent / "zizmor")
    # --offline: no GitHub API calls (the audits that need them are not in its default set without a token).
    result = subprocess.run([zizmor, "--offline", "--no-progress", str(ROOT / ".github")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


def test_every_tenants_command_in_the_workflows_parses():
    assert len(ALL_COMMANDS) >= 12  # the extraction found the commands (see the test below for which)
    failures = []
    for file, job, argv in ALL_COMMANDS:
        for args in expansions(argv):
            try:
                parse(args)
            except Exception as err:  # noqa: BLE001 - collect every bad line, then fail once naming each
                message = err.format_message() if hasattr(err, "format_message") else str(err)
                failures.append(f"{file} job {job}: tenants {shlex.join(args)}: {message}")
    assert not failures, "\n".join(failures)


def test_the_workflows_use_every_deploy_command():
    used = {(file, parse(expand(argv))) for file, _, argv in ALL_COMMANDS}
    assert {("deploy-environment.yml", c) for c in (("plan",), ("upgrade",), ("report", "merge"), ("verify",),
                                                    ("report", "notify"))} <= used
    assert {("downgrade.yml", c) for c in (("sql",), ("downgrade",), ("status",), ("history",))} <= used
    assert ("ci.yml", ("sql",)) in used and ("ci.yml", ("upgrade",)) in used and ("ci.yml", ("check",)) in used


def test_a_renamed_option_is_caught():
    # The check above must be able to fail: an option that does not exist, a value of the wrong shape.
    with pytest.raises(Exception, match="No such option: --shards"):
        parse(expand(["upgrade", "$TARGET", "--shards", "$SHARD"]))
    with pytest.raises(Exception, match="Missing parameter: output"):
        parse(["report", "merge", "a.json"])
    with pytest.raises(Exception, match="No such command 'merged'"):
        parse(["report", "merged", "a.json"])
    assert tenants_commands('x=$(tenants status --tenant "$TENANT" --json | jq -r .x)\n'
                            'tenants plan "$TARGET" > p.md && tenants \\\n  verify --report m.json\n'
                            'A=1 B= .venv/bin/tenants list; python3 -m tenants sql || echo "tenants list"\n'
                            'if ! tenants status; then { tenants report merge "${reports[@]}" -o m; }; fi') == [
        ["status", "--tenant", "$TENANT", "--json"], ["plan", "$TARGET"], ["verify", "--report", "m.json"],
        ["list"], ["sql"], ["status"], ["report", "merge", "${reports[@]}", "-o", "m"]]
    assert expansions(["verify", "${given[@]}"]) == [["verify"], ["verify", "--report", "merged.json"]]


# -------------------------------------------------------------------------------------- the approval path


def job_commands(job_id: str, job: dict) -> list[list[str]]:
    return [argv for _, script in run_scripts({"jobs": {job_id: job}}) for argv in tenants_commands(script)]


def aimed(workflow: dict, job: dict, commands: list[list[str]]) -> bool:
    """Whether the job's tenants commands can reach a configured environment. Only a job that names no
    environment or configuration anywhere (workflow, job or step env, its scripts, its command lines) is not:
    it can only reach the embedded demo fleet of SQLite files on the runner (ci.yml's README check)."""
    text = yaml.safe_dump(job) + yaml.safe_dump(workflow.get("env", {}))
    return "TENANTS_ENV" in text or "TENANTS_CONFIG" in text or any(
        re.match(r"(-e|-c|--env|--config)", arg) for argv in commands for arg in argv)


def approval_violations(workflow: dict) -> list[str]:
    """Jobs that run a tenant-changing command, or sign in as the deploy identity, without the approval: the
    job neither carries the approval environment nor needs (directly, with a required success) a job that
    does."""
    jobs = workflow["jobs"]

    def approved(job_id: str) -> bool:
        job = jobs[job_id]
        if job.get("environment") == APPROVAL:
            return True
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        condition = " ".join(str(job.get("if", "")).split())
        # The job's condition must require the approved job's success, and nothing may widen it again.
        return not re.search(r"always\(\)|\|\|", condition) and any(
            approved(n) and f"needs.{n}.result == 'success'" in condition for n in needs)

    violations = []
    for job_id, job in jobs.items():
        commands = job_commands(job_id, job)
        writes = {parse(expand(argv))[0] for argv in commands} & WRITES if aimed(workflow, job, commands) else {
            parse(expand(argv))[0] for argv in commands} & WRITES - {"upgrade"}
        deploy_identity = "vars.AZURE_CLIENT_ID" in yaml.safe_dump(job)
        if (writes or deploy_identity) and not approved(job_id):
            violations.append(f"{job_id}: {sorted(writes) or 'deploy identity'} without the approval")
    return violations


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_nothing_changes_a_tenant_before_the_approval(path):
    assert approval_violations(load(path)) == []


def test_the_approval_check_catches_a_path_around_it():
    workflow = load(WORKFLOWS / "deploy-environment.yml")
    assert workflow["jobs"]["canary"]["environment"] == APPROVAL
    assert workflow["jobs"]["apply"]["environment"] == APPROVAL + "-fleet"
    bypass = copy.deepcopy(workflow)
    bypass["jobs"]["apply"]["if"] = "${{ !cancelled() && !inputs.dry-run }}"  # forgot the canary's success
    assert approval_violations(bypass) == ["apply: ['upgrade'] without the approval"]
    widened = copy.deepcopy(workflow)
    widened["jobs"]["apply"]["if"] = "${{ needs.canary.result == 'success' || always() }}"
    assert approval_violations(widened) == ["apply: ['upgrade'] without the approval"]
    # The demo upgrade in ci.yml is fine; any way of aiming it at a real environment is not.
    for step in ({"run": "tenants --env production upgrade"}, {"run": "tenants -eproduction upgrade"},
                 {"run": "tenants --config prod.toml upgrade"}, {"run": "TENANTS_ENV=production tenants upgrade"},
                 {"run": "export TENANTS_ENV=production"}, {"run": "true", "env": {"TENANTS_ENV": "production"}},
                 {"run": "tenants downgrade -t acme --yes -- -1"}):
        ci = load(WORKFLOWS / "ci.yml")
        ci["jobs"]["test"]["steps"].append(step)
        assert approval_violations(ci) == [f"test: {['downgrade' if 'downgrade' in step['run'] else 'upgrade']}"
                                           " without the approval"], step
    early = copy.deepcopy(workflow)
    early["jobs"]["plan"]["env"]["AZURE_CLIENT_ID"] = "${{ vars.AZURE_CLIENT_ID }}"  # deploy identity in plan
    assert approval_violations(early) == ["plan: deploy identity without the approval"]


def test_deploy_order_concurrency_and_permissions():
    deploy = load(WORKFLOWS / "deploy.yml")
    assert deploy["permissions"] == {}
    for env in ("staging", "production"):
        job = deploy["jobs"][env]
        # queue: max, so that a third deploy waits instead of cancelling the pending one; GitHub refuses it
        # together with cancel-in-progress: true (the schema does not know that rule).
        assert job["concurrency"] == {"group": f"tenants-deploy-{env}${{{{ inputs.dry-run && "
                                               "format('-dry-run-{0}', github.run_id) || '' }}",
                                      "cancel-in-progress": False, "queue": "max"}
        assert job["permissions"]["id-token"] == "write" and job["permissions"]["contents"] == "read"
        assert job["with"]["environment"] == env
        # GitHub's same-repository syntax (July 2026): the called workflow at the caller's exact commit.
        assert job["uses"] == "$/.github/workflows/deploy-environment.yml"
    assert deploy["jobs"]["production"]["needs"] == "staging"
    assert "needs.staging.result == 'success'" in deploy["jobs"]["production"]["if"]
    jobs = load(WORKFLOWS / "deploy-environment.yml")["jobs"]
    assert jobs["canary"]["needs"] == "plan"
    assert jobs["apply"]["needs"] == ["plan", "canary"] and jobs["verify"]["needs"] == ["plan", "canary", "apply"]
    assert jobs["notify"]["if"] == "failure()"
    assert jobs["apply"]["strategy"]["fail-fast"] is False
    assert "max-parallel" in jobs["apply"]["strategy"]
    # A dry run plans and stops: every job after the plan is off when inputs.dry-run is true.
    for job_id in ("canary", "apply", "verify"):
        assert "!inputs.dry-run" in jobs[job_id]["if"]
    downgrade = load(WORKFLOWS / "downgrade.yml")["jobs"]["downgrade"]
    assert downgrade["concurrency"] == {"group": "tenants-downgrade-${{ inputs.environment }}-${{ inputs.tenant }}",
                                        "cancel-in-progress": False}
    assert downgrade["environment"] == APPROVAL and downgrade["needs"] == "plan"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_queue_max_with_cancel_in_progress(path):
    # GitHub rejects `queue: max` with `cancel-in-progress: true` as a workflow validation error; the vendored
    # schema accepts the pair, so it is checked here.
    workflow = load(path)
    blocks = [workflow.get("concurrency")] + [job.get("concurrency") for job in workflow["jobs"].values()]
    for block in blocks:
        if isinstance(block, dict) and block.get("queue") == "max":
            assert block.get("cancel-in-progress", False) is False, block


# ------------------------------------------------------------------------------------ the SQL Server driver

# The commands that read files only (reports); every other tenants command in a job aimed at an environment
# connects to its databases, which on Azure SQL needs Microsoft's ODBC Driver 18.
OFFLINE = {("report", "merge"), ("report", "notify")}
INSTALL = re.compile(r"\bACCEPT_EULA=Y\b.*\bapt-get install\b.*\bmsodbcsql18\b")
DRIVER_CHECK = re.compile(r'\bodbcinst -q -d -n "ODBC Driver 18 for SQL Server"')


def local_action(uses: str) -> dict:
    """A composite action of this repository (`./path` or `$/path`), parsed."""
    folder = ROOT / uses[2:]
    return load(next(p for p in (folder / "action.yml", folder / "action.yaml") if p.exists()))


def job_lines(steps: list[dict]) -> list[str]:
    """What the steps run, line by line in order: scripts (continuations joined), `uses:` lines, and the steps
    of this repository's composite actions in their place."""
    lines = []
    for step in steps:
        uses = step.get("uses", "")
        if uses.startswith(("./", "$/")) and "/.github/workflows/" not in uses:
            lines += job_lines(local_action(uses)["runs"]["steps"])
        elif uses:
            lines.append(f"uses: {uses}")
        if "run" in step:
            lines += re.sub(r"\\\n\s*", " ", step["run"]).splitlines()
    return lines


def first(lines: list[str], test) -> int:
    """The index of the first line that passes the test, or len(lines)."""
    return next((i for i, line in enumerate(lines) if test(line)), len(lines))


def driver_violations(workflow: dict) -> tuple[list[str], list[str]]:
    """(jobs that connect to an environment's databases, what is wrong in them): each must install msodbcsql18
    (after apt-get update), then check that unixODBC knows the driver, before its first tenants command."""
    connecting, violations = [], []
    for job_id, job in workflow["jobs"].items():
        commands = job_commands(job_id, job)
        if not aimed(workflow, job, commands) or all(parse(expand(argv)) in OFFLINE for argv in commands):
            continue
        connecting.append(job_id)
        lines = job_lines(job.get("steps", []))
        missing = len(lines)
        update = first(lines, lambda line: re.search(r"\bapt-get update\b", line))
        install, check = first(lines, INSTALL.search), first(lines, DRIVER_CHECK.search)
        command = first(lines, lambda line: not line.lstrip().startswith("#") and tenants_commands(line))
        if install == missing:
            violations.append(f"{job_id}: never installs msodbcsql18")
        elif not update < install:
            violations.append(f"{job_id}: installs msodbcsql18 without apt-get update first")
        if check == missing:
            violations.append(f"{job_id}: never checks for the ODBC driver")
        elif install < missing and check < install:
            violations.append(f"{job_id}: checks for the ODBC driver before installing it")
        if install < missing and check < missing and not max(install, check) < command:
            violations.append(f"{job_id}: runs tenants before installing and checking the ODBC driver")
    return connecting, violations


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_job_that_connects_installs_the_driver_before_its_check_and_its_first_command(path):
    connecting, violations = driver_violations(load(path))
    assert violations == []
    # The jobs found are the ones that reach Azure SQL (the detection cannot silently find none).
    assert connecting == {"deploy-environment.yml": ["plan", "canary", "apply", "verify"],
                          "downgrade.yml": ["plan", "downgrade"]}.get(path.name, [])


def test_the_driver_check_catches_a_job_without_the_driver():
    workflow = load(WORKFLOWS / "deploy-environment.yml")
    inline = [{"run": "sudo apt-get update"}, {"run": "sudo ACCEPT_EULA=Y apt-get install -y msodbcsql18"},
              {"run": 'odbcinst -q -d -n "ODBC Driver 18 for SQL Server"'}]

    def with_steps(job_id: str, make) -> dict:
        changed = copy.deepcopy(workflow)
        steps = changed["jobs"][job_id]["steps"]
        at = next(i for i, s in enumerate(steps) if s.get("uses", "").endswith("/install-tenants-azure"))
        steps[at:at + 1] = make(copy.deepcopy(inline))
        return changed

    assert driver_violations(with_steps("apply", lambda s: s))[1] == []
    assert driver_violations(with_steps("apply", lambda s: s[2:]))[1] == ["apply: never installs msodbcsql18"]
    assert driver_violations(with_steps("verify", lambda s: [s[1], s[0], s[2]]))[1] == [
        "verify: installs msodbcsql18 without apt-get update first"]
    assert driver_violations(with_steps("plan", lambda s: [s[2], s[0], s[1]]))[1] == [
        "plan: checks for the ODBC driver before installing it"]
    late = with_steps("canary", lambda s: s)
    steps = late["jobs"]["canary"]["steps"]
    steps.insert(0, steps.pop(next(i for i, s in enumerate(steps) if "tenants upgrade" in s.get("run", ""))))
    assert driver_violations(late)[1] == ["canary: runs tenants before installing and checking the ODBC driver"]


# -------------------------------------------------------------------------------------------- action pins

# Every pin, checked against the action's own repository: the SHA is what `git rev-parse 'refs/tags/TAG^{commit}'`
# gives there, and the action.yml at that commit declares `runs.using: node24` (GitHub forces Node 20 actions
# onto Node 24 with a deprecation warning). A new pin, or a changed one, fails below until it has been checked
# the same way and written here.
VERIFIED_PINS = {
    "3d3c42e5aac5ba805825da76410c181273ba90b1": ("actions/checkout", "v7.0.1"),
    "5fda3b95a4ea91299a34e894583c3862153e4b97": ("actions/setup-python", "v7.0.0"),
    "bbbca2ddaa5d8feaa63e36b76fdaad77386f024f": ("actions/upload-artifact", "v7.0.0"),
    "3e5f45b2cfb9172054b4087a40e8e0b5a5461e7c": ("actions/download-artifact", "v8.0.1"),
    "f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca": ("azure/login", "v3.0.1"),
}
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?:\s+#\s*(?P<comment>.*))?$")


def uses_lines(path: Path) -> list[tuple[str, str]]:
    """Every `uses:` of a workflow or action file with the comment on its line (YAML drops comments)."""
    return [(m["ref"], (m["comment"] or "").strip()) for line in path.read_text(encoding="utf-8").splitlines()
            for m in [USES_LINE.match(line)] if m]


def uses_values(node) -> list[str]:
    """Every `uses:` value of a parsed workflow or action, wherever it sits (jobs, steps, composite steps)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "uses" and isinstance(v, str)] + [
            u for v in node.values() for u in uses_values(v)]
    return [u for v in node for u in uses_values(v)] if isinstance(node, list) else []


def pin_violations(path: Path) -> list[str]:
    found = uses_lines(path)
    # The line scan must see every `uses:` the YAML has, or a pin written another way would go unchecked.
    assert sorted(ref for ref, _ in found) == sorted(uses_values(load(path))), path.name
    violations = []
    for ref, comment in found:
        if ref.startswith(("./", "$/")):  # this repository's own actions and workflows
            continue
        m = re.fullmatch(r"(?P<action>[\w.-]+/[\w.-]+)(?:/[\w./-]+)?@(?P<sha>[0-9a-f]{40})", ref)
        if not m:
            violations.append(f"{path.name}: {ref}: not pinned to a full commit SHA")
            continue
        tag = re.fullmatch(r"(v\d+\.\d+\.\d+)\b.*", comment)
        if not tag:
            violations.append(f"{path.name}: {ref}: no '# vX.Y.Z' comment naming the release")
            continue
        verified = VERIFIED_PINS.get(m["sha"])
        if verified != (m["action"].lower(), tag[1]):
            violations.append(f"{path.name}: {m['action']}@{m['sha']} # {tag[1]}: not a verified pin "
                              f"({'unknown SHA' if verified is None else f'verified as {verified[0]} {verified[1]}'})"
                              "; check it against the action's repository and add it to VERIFIED_PINS")
    return violations


@pytest.mark.parametrize("path", FILES + ACTIONS, ids=lambda p: p.relative_to(ROOT / ".github").as_posix())
def test_every_action_is_pinned_to_a_verified_release(path):
    assert pin_violations(path) == []


def test_the_pin_check_catches_a_wrong_pin(tmp_path):
    path = tmp_path / "w.yml"
    good = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1"
    for line, expected in (
            (f"{good} # v7.0.1", None),
            (f"{good} # v7.0.0", "not a verified pin (verified as actions/checkout v7.0.1)"),
            (f"{good}", "no '# vX.Y.Z' comment"),
            ("actions/checkout@v7", "not pinned to a full commit SHA"),
            (f"actions/setup-python@{good.split('@')[1]} # v7.0.1", "verified as actions/checkout v7.0.1"),
            ("actions/checkout@0000000000000000000000000000000000000000 # v7.0.1", "unknown SHA")):
        path.write_text(f"jobs:\n  j:\n    steps:\n      - uses: {line}\n", encoding="utf-8")
        violations = pin_violations(path)
        assert (violations == []) if expected is None else (len(violations) == 1 and expected in violations[0]), line
