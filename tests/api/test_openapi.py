"""The OpenAPI schema is valid, and every operation it lists answers as documented."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from accounts.models import Membership, Role
from accounts.services import invitation_create, personal_token_create
from tests.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db

ORDER = {"get": 0, "post": 1, "patch": 2, "put": 3, "delete": 4}

BODIES = {
    ("/api/v1/orgs/", "post"): {"name": "Second Org"},
    ("/api/v1/orgs/{org}/", "patch"): {"name": "Acme Renamed"},
    ("/api/v1/orgs/{org}/members/{member_id}/", "patch"): {"role": "admin"},
    ("/api/v1/orgs/{org}/invitations/", "post"): {"email": "joiner@example.com"},
    ("/api/v1/orgs/{org}/networks/", "post"): {"slug": "second-net"},
    ("/api/v1/orgs/{org}/networks/{slug}/", "patch"): {"description": "Live data"},
    ("/api/v1/orgs/{org}/keys/", "post"): {"name": "k", "networks": ["acme-live"]},
    ("/api/v1/orgs/{org}/keys/{key_id}/rotate/", "post"): {"grace_seconds": 60},
    ("/api/v1/me/tokens/", "post"): {"name": "script"},
    ("/api/v1/orgs/{org}/simulations/", "post"): {
        "name": "town",
        "network": "acme-live",
        "topology": "grid",
        "topology_options": {"rows": 2, "cols": 2},
    },
    ("/api/v1/orgs/{org}/simulations/{simulation_id}/", "patch"): {"steps_per_publish": 2},
}


def load_schema() -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_is_valid_openapi_3(db):
    schema = load_schema()
    validate(schema)
    assert schema["openapi"].startswith("3.")
    assert "personalToken" in schema["components"]["securitySchemes"]


def test_every_documented_operation_works_for_an_owner(acme, globex, as_user):
    owner = as_user(acme.owner)
    member_id = Membership.objects.get(organization=acme.organization, user=acme.member).pk
    actor = Membership.objects.get(organization=acme.organization, user=acme.owner)
    pending, _ = invitation_create(actor=actor, email="later@example.com", role=Role.MEMBER)
    globex_owner = Membership.objects.get(organization=globex.organization, user=globex.owner)
    _, accept_token = invitation_create(
        actor=globex_owner, email=acme.owner.email, role=Role.MEMBER
    )
    token, _ = personal_token_create(user=acme.owner, name="old")
    from simulator.models import Simulation

    simulation = Simulation.objects.create(name="s", network=acme.network, topology="sample_net")
    from simulator.models import Town

    town = Town.objects.create(
        organization=acme.organization, name="t", source=b"<net/>", size_bytes=6
    )
    params = {
        "org": "acme",
        "slug": "acme-live",
        "key_id": acme.api_key.pk,
        "member_id": member_id,
        "invitation_id": pending.pk,
        "token_id": token.pk,
        "simulation_id": simulation.pk,
        "town_id": town.pk,
        "action": "start",
    }
    bodies = {**BODIES, ("/api/v1/invitations/accept/", "post"): {"token": accept_token}}

    paths = load_schema()["paths"]
    operations = [
        (path, method) for path, item in paths.items() for method in item if method in ORDER
    ]
    assert len(operations) >= 20
    for path, method in sorted(operations, key=lambda op: (ORDER[op[1]], op[0])):
        url = path.format(**params)
        documented = paths[path][method]["responses"]
        if path == "/api/v1/networks/{slug}/messages":
            # Served by the publish app with a publisher key, not a session.
            headers = {"Authorization": f"Bearer {acme.secret}"}
            asgi = AsgiTestClient()
            if method == "post":
                response = asgi.post(url, data={"data": {"x": 1}}, headers=headers)
            else:
                response = asgi.get(url, headers=headers)
            assert 200 <= response.status_code < 300, response.text
            assert str(response.status_code) in documented, (method, path)
            continue
        if (path, method) == ("/api/v1/orgs/{org}/towns/", "post"):  # a file upload
            upload = SimpleUploadedFile("town.net.xml", b"<net/>")
            response = owner.post(url, {"file": upload}, format="multipart")
        else:
            response = getattr(owner, method)(url, data=bodies.get((path, method)), format="json")
        assert 200 <= response.status_code < 300, (
            method,
            path,
            response.status_code,
            response.content,
        )
        # The very status the schema documents (creates answer 201; a restore 200, with the
        # network), not just some success.
        assert str(response.status_code) in documented, (method, path, response.status_code)


def test_every_operation_documents_the_common_errors_in_the_one_error_shape(db):
    schema = load_schema()
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ORDER:
                continue
            responses = operation["responses"]
            if path != "/api/v1/networks/{slug}/messages":
                # Every management operation needs a person: 401 without one, 403 for a role.
                assert {"401", "403"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if "requestBody" in operation:
                assert {"400", "415"} <= set(responses) or path.startswith("/api/v1/networks/"), (
                    method,
                    path,
                )
            for code, response in responses.items():
                if code.startswith("4"):
                    schema_ref = response["content"]["application/json"]["schema"]
                    assert schema_ref == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_the_interactive_docs_page_is_served_without_a_cdn(db):
    page = APIClient().get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html.lower()
    # Assets come from this server (drf-spectacular-sidecar), not from the internet.
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
