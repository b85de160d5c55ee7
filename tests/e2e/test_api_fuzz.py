"""Fuzzing the OpenAPI schema against a real server: nothing anyone sends gets a 5xx, and every
answer is one the schema documents (status code, content type and body).

Schemathesis (its CLI, in a process of its own) reads ``/api/schema/`` from a production stack
(PostgreSQL, Redis, uvicorn with ``DEBUG=false``, as deployed) and sends every operation
generated requests, valid and invalid, with each kind of credential: a publisher key, a person
who belongs to no organization, a plain member and the owner of an organization. Bounded and
deterministic: a fixed number of examples per operation and credential, generation
derandomized, and one deadline for the whole file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import Stack, manage, require_production_services, start_production_stack

pytestmark = pytest.mark.e2e

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]
# The whole file (stack start included) stays within this; a run still going when the
# budget is spent is stopped and fails the test.
BUDGET_SECONDS = float(os.environ.get("API_FUZZ_BUDGET_SECONDS", "") or 300)
# Fewer examples for the credentials that the API mostly refuses (401/404): their answers
# vary little, and the owner's walk through every operation is where the depth is.
EXAMPLES = {"publisher": 12, "listener": 8, "member": 10, "owner": 30, "revoker": 12}

SETUP = r"""
import json
from accounts.models import Membership, Role, User
from accounts.services import invitation_create, organization_create, personal_token_create
from networks.services import api_key_create, network_create
from simulator.models import Simulation

owner = User.objects.create_user(email="owner@fuzz.example")
organization = organization_create(name="Fuzz Org", owner=owner, slug="fuzz-org")
members = {"owner": Membership.objects.get(user=owner, organization=organization)}
for role in (Role.ADMIN, Role.MEMBER):
    person = User.objects.create_user(email=f"{role}@fuzz.example")
    members[role] = Membership.objects.create(user=person, organization=organization, role=role)
net = network_create(organization=organization, slug="fuzz-net")
paid = network_create(organization=organization, slug="fuzz-paid", is_public=False)
key, _ = api_key_create(organization=organization, name="generator", networks=[net, paid])
simulation = Simulation.objects.create(
    name="town", network=net, topology="grid", topology_options={"rows": 2, "cols": 2}
)
invitation, _ = invitation_create(
    actor=members["owner"], email="invitee@fuzz.example", role=Role.MEMBER
)
publishing = organization_create(name="Fuzz Publisher", owner=owner, slug="fuzz-publisher")
network_create(organization=publishing, slug="pub-net")
network_create(organization=publishing, slug="pub-paid", is_public=False)
listener = User.objects.create_user(email="listener@fuzz.example")
revoker = User.objects.create_user(email="revoker@fuzz.example")
revoker_tokens = [personal_token_create(user=revoker, name=f"t{i}") for i in range(3)]
print(json.dumps({
    "tokens": {
        "owner": personal_token_create(user=owner, name="fuzz")[1],
        "member": personal_token_create(user=members[Role.MEMBER].user, name="fuzz")[1],
        "listener": personal_token_create(user=listener, name="fuzz")[1],
        "revoker": revoker_tokens[0][1],
    },
    "ids": {
        "key_id": [key.pk],
        # Not the owner's own: leaving early would leave most of its run at 404.
        "member_id": [members[Role.ADMIN].pk, members[Role.MEMBER].pk],
        "simulation_id": [simulation.pk],
        "invitation_id": [invitation.pk],
        "token_id": [token.pk for token, _ in revoker_tokens],
    },
}))
"""


@dataclass
class Run:
    """One schemathesis run: a credential and which operations it is sent to."""

    name: str
    headers: dict[str, str]
    include: list[str] = field(default_factory=list)  # --include-path-regex patterns
    exclude: list[str] = field(default_factory=list)  # --exclude-path patterns


# DELETE /api/v1/me/tokens/{token_id}/ revokes the caller's own tokens: once it hits the token
# in use (ids are small and the fuzzer tries them), every later case would be a 401 and test
# nothing. Only the throwaway "revoker" runs it, on its own (its own token ids among those
# tried), after the others.
SELF_REVOKING = "/api/v1/me/tokens/{token_id}/"


def runs(credentials: dict) -> list[Run]:
    tokens = credentials["tokens"]
    bearer = {name: {"Authorization": f"Bearer {secret}"} for name, secret in tokens.items()}
    return [
        # First: the owner's run archives and reconfigures networks, which changes what a
        # publisher gets (409, 413); its own networks are in an organization of their own.
        Run("publisher", {"Authorization": f"Bearer {credentials['publisher']}"}),
        Run("listener", bearer["listener"], exclude=[SELF_REVOKING]),
        Run("member", bearer["member"], exclude=[SELF_REVOKING]),
        Run("owner", bearer["owner"], exclude=[SELF_REVOKING]),
        Run("revoker", bearer["revoker"], include=["^/api/v1/me/tokens/"]),
    ]


def config_toml(ids: dict[str, list[int]]) -> str:
    """Realistic values for path and body parameters (most of the time; random otherwise), so
    cases get past the 404 of an unknown organization, network or object."""
    dictionaries = {
        # Weighted towards the fuzzed organization; the others are other tenants'.
        "orgs": ["fuzz-org", "fuzz-org", "fuzz-org", "fuzz-publisher", "katiedj-demo"],
        "slugs": ["fuzz-net", "fuzz-paid", "pub-net", "pub-paid", "sample_net", "paid-net"],
        "own_slugs": ["fuzz-net", "fuzz-paid"],
        **ids,
    }
    lines = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    bindings = {
        "path.org": ("orgs", 0.9),
        "path.slug": ("slugs", 0.8),
        "body.network": ("own_slugs", 0.8),
        "body.networks[*]": ("own_slugs", 0.8),
        **{f"path.{name}": (name, 0.7) for name in ids},
    }
    lines.append("[parameters]")
    for key, (dictionary, probability) in bindings.items():
        lines.append(f'"{key}" = {{ dictionary = "{dictionary}", probability = {probability} }}')
    return "\n".join(lines) + "\n"


def schemathesis(run: Run, base: str, config: Path, workdir: Path, timeout: float) -> tuple:
    """Run the CLI; returns (exit code, its output, the JSON report or None)."""
    report = workdir / f"{run.name}.json"
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(config),
        "run", f"{base}/api/schema/",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(EXAMPLES[run.name]),
        "--generation-deterministic",
        # Stateful testing needs OpenAPI links, which the schema does not declare.
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--request-timeout", "10",
        "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    for name, value in run.headers.items():
        command += ["--header", f"{name}: {value}"]
    for pattern in run.include:
        command += ["--include-path-regex", pattern]
    for path in run.exclude:
        command += ["--exclude-path", path]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update({"COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    try:
        result = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        # Always bytes, whatever text= says.
        output = (expired.stdout or b"").decode(errors="replace")
        pytest.fail(
            f"schemathesis ({run.name}) still running when the {BUDGET_SECONDS:.0f} s budget "
            f"of this file was spent:\n{output[-6000:]}"
        )
    data = json.loads(report.read_text()) if report.exists() else None
    return result.returncode, result.stdout + result.stderr, data


def server_errors(stack: Stack) -> str:
    """The server's logged errors (a 5xx logs its traceback), not its many 4xx warnings."""
    lines = stack.servers[0].log_path.read_text(errors="replace").splitlines()
    start = [i for i, line in enumerate(lines) if " ERROR " in line or "Traceback" in line]
    return "\n".join("\n".join(lines[i : i + 40]) for i in start[:5]) or "(no errors logged)"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A production stack with one uvicorn (DEBUG off, as deployed), its fixtures and config."""
    require_production_services()
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("fuzz")
    stack: Stack = start_production_stack(tmp, processes=1, extra_env={"DEBUG": "false"})
    try:
        output = manage(stack.env, "shell", "-v", "0", "-c", SETUP)
        credentials = json.loads(output.strip().splitlines()[-1])
        credentials["publisher"] = manage(
            stack.env, "create_api_key", "--org", "fuzz-publisher", "--name", "fuzz",
            "--network", "pub-net", "--network", "pub-paid",
        ).strip()  # fmt: skip
        config = tmp / "schemathesis.toml"
        config.write_text(config_toml(credentials["ids"]))
        yield stack, credentials, config, tmp, started
    finally:
        stack.stop()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_api_answers_every_generated_request_as_documented(fuzzed, name):
    stack, credentials, config, workdir, started = fuzzed
    run = next(run for run in runs(credentials) if run.name == name)
    remaining = BUDGET_SECONDS - (time.monotonic() - started)
    if remaining <= 0:
        pytest.fail(f"the {BUDGET_SECONDS:.0f} s budget of this file was spent before {name}")
    code, output, report = schemathesis(
        run, stack.servers[0].http, config, workdir, timeout=remaining
    )
    server_log = server_errors(stack)
    assert report is not None, f"no report from schemathesis:\n{output[-6000:]}\n{server_log}"
    summary = {
        "exit code": code,
        "failures": [
            (failure["code"], failure["title"], failure["operations"])
            for failure in report["failures"]
        ],
        "errors": report["errors"],
    }
    assert code == 0 and not report["failures"] and not report["errors"], (
        f"{json.dumps(summary, indent=1)}\n{output[-12000:]}\nserver log:\n{server_log}"
    )
    # A run that silently tested nothing would pass too.
    assert report["operations"]["tested"] >= (3 if run.include else 30), report["operations"]
    assert report["test_cases"]["generated"] > 0
