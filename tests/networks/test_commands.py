"""Management commands a provider or operator runs by hand."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from networks.models import ApiKey, Network


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_create_network_then_key_then_revoke():
    run("create_network", "river-levels", "--org", "hydro", "--name", "River levels")
    network = Network.objects.get(slug="river-levels")
    assert network.organization.slug == "hydro"
    assert network.is_public

    secret, message = run(
        "create_api_key", "--org", "hydro", "--name", "gauge", "--network", "river-levels"
    )
    secret = secret.strip()
    assert secret.startswith("kdj_")
    assert "shown only once" in message
    api_key = ApiKey.objects.get(name="gauge")
    assert secret not in (api_key.prefix, api_key.hashed_secret)

    run("revoke_api_key", api_key.prefix, "--org", "hydro")
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None


@pytest.mark.django_db
def test_commands_explain_what_is_wrong():
    run("create_network", "ok-net", "--org", "hydro")
    with pytest.raises(CommandError, match="already exists"):
        run("create_network", "ok-net", "--org", "hydro")
    with pytest.raises(CommandError, match="lowercase"):
        run("create_network", "Bad Slug!", "--org", "hydro")
    with pytest.raises(CommandError, match="No organization"):
        run("create_api_key", "--org", "nobody", "--name", "x", "--network", "ok-net")
    with pytest.raises(CommandError, match="no network"):
        run("create_api_key", "--org", "hydro", "--name", "x", "--network", "missing")


@pytest.mark.django_db
def test_bootstrap_demo_is_idempotent_and_keeps_its_key(tmp_path, settings):
    settings.VAR_DIR = tmp_path
    settings.DEMO_API_KEY = ""
    first, _ = run("bootstrap_demo")
    second, _ = run("bootstrap_demo")
    key_line = next(line for line in first.splitlines() if "demo publisher key" in line)
    assert key_line in second
    assert "(created)" in first and "(reused)" in second
    assert Network.objects.filter(slug="sample_net").count() == 1
    assert ApiKey.objects.count() == 1
    assert (tmp_path / "demo_api_key").stat().st_mode & 0o077 == 0


@pytest.mark.django_db
def test_bootstrap_demo_honours_demo_api_key(tmp_path, settings, publisher):
    settings.VAR_DIR = tmp_path
    settings.DEMO_API_KEY = "any string at all"
    out, _ = run("bootstrap_demo")
    assert "any string at all" in out
    assert not (tmp_path / "demo_api_key").exists()
    body = '{"network": "sample_net", "data": {"state": {"0": 3.0}}}'
    response = publisher.post(
        "/api/publish",
        data=body,
        content_type="application/json",
        headers={"API-KEY": "any string at all"},
    )
    assert response.status_code == 200
