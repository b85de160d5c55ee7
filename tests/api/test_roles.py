"""Role rules inside one organization: owner > admin > member (read-only)."""

from __future__ import annotations

import pytest

from accounts.models import Membership, Role

pytestmark = pytest.mark.django_db


def membership_id(tenant, user):
    return Membership.objects.get(organization=tenant.organization, user=user).pk


def test_a_member_can_read_but_cannot_create_rotate_or_revoke_keys(acme, as_user):
    member = as_user(acme.member)
    listed = member.get("/api/v1/orgs/acme/keys/")
    assert listed.status_code == 200
    assert listed.json()["results"][0]["prefix"] == acme.api_key.prefix
    create = member.post(
        "/api/v1/orgs/acme/keys/", {"name": "x", "networks": ["acme-live"]}, format="json"
    )
    rotate = member.post(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/rotate/", {}, format="json")
    revoke = member.delete(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/")
    for response in (create, rotate, revoke):
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    acme.api_key.refresh_from_db()
    assert acme.api_key.is_active


def test_no_listing_ever_reveals_a_secret(acme, as_user):
    for user in (acme.owner, acme.admin, acme.member):
        client = as_user(user)
        listing = client.get("/api/v1/orgs/acme/keys/").content.decode()
        detail = client.get(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/").content.decode()
        assert acme.secret not in listing and acme.secret not in detail
        assert acme.api_key.hashed_secret not in listing + detail


def test_a_member_cannot_change_networks(acme, as_user):
    member = as_user(acme.member)
    assert (
        member.post("/api/v1/orgs/acme/networks/", {"slug": "new"}, format="json").status_code
        == 403
    )
    assert (
        member.patch(
            "/api/v1/orgs/acme/networks/acme-live/", {"name": "x"}, format="json"
        ).status_code
        == 403
    )
    assert member.post("/api/v1/orgs/acme/networks/acme-live/archive/").status_code == 403


def test_an_admin_cannot_remove_or_demote_the_owner(acme, as_user):
    admin = as_user(acme.admin)
    owner_id = membership_id(acme, acme.owner)
    assert admin.delete(f"/api/v1/orgs/acme/members/{owner_id}/").status_code == 403
    assert (
        admin.patch(
            f"/api/v1/orgs/acme/members/{owner_id}/", {"role": "member"}, format="json"
        ).status_code
        == 403
    )
    assert Membership.objects.get(pk=owner_id).role == Role.OWNER


def test_an_admin_can_remove_a_member_and_invite(acme, as_user):
    admin = as_user(acme.admin)
    member_id = membership_id(acme, acme.member)
    assert admin.delete(f"/api/v1/orgs/acme/members/{member_id}/").status_code == 204
    invited = admin.post(
        "/api/v1/orgs/acme/invitations/", {"email": "Pat@Example.com"}, format="json"
    )
    assert invited.status_code == 201
    assert invited.json()["email"] == "pat@example.com"
    assert invited.json()["accept_token"].startswith("kdji_")
    # Admins cannot hand out ownership.
    owner_invite = admin.post(
        "/api/v1/orgs/acme/invitations/", {"email": "x@example.com", "role": "owner"}, format="json"
    )
    assert owner_invite.status_code == 403


def test_only_owners_change_roles(acme, as_user):
    member_id = membership_id(acme, acme.member)
    assert (
        as_user(acme.admin)
        .patch(f"/api/v1/orgs/acme/members/{member_id}/", {"role": "admin"}, format="json")
        .status_code
        == 403
    )
    promoted = as_user(acme.owner).patch(
        f"/api/v1/orgs/acme/members/{member_id}/", {"role": "admin"}, format="json"
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"


def test_the_last_owner_cannot_leave_or_step_down(acme, as_user):
    owner = as_user(acme.owner)
    owner_id = membership_id(acme, acme.owner)
    leave = owner.delete(f"/api/v1/orgs/acme/members/{owner_id}/")
    demote = owner.patch(f"/api/v1/orgs/acme/members/{owner_id}/", {"role": "admin"}, format="json")
    assert leave.status_code == demote.status_code == 409
    assert "owner" in leave.json()["error"]
    # With a second owner, leaving is fine.
    owner.patch(
        f"/api/v1/orgs/acme/members/{membership_id(acme, acme.admin)}/",
        {"role": "owner"},
        format="json",
    )
    assert owner.delete(f"/api/v1/orgs/acme/members/{owner_id}/").status_code == 204


def test_anyone_may_leave(acme, as_user):
    member_id = membership_id(acme, acme.member)
    assert as_user(acme.member).delete(f"/api/v1/orgs/acme/members/{member_id}/").status_code == 204


def test_invitations_are_accepted_by_the_invited_address_only(acme, acme_invitation, as_user):
    from tests.factories import UserFactory

    _, secret = acme_invitation
    stranger = as_user(UserFactory(email="stranger@example.com"))
    assert (
        stranger.post("/api/v1/invitations/accept/", {"token": secret}, format="json").status_code
        == 404
    )
    invitee = UserFactory(email="new@acme.example")
    accepted = as_user(invitee).post(
        "/api/v1/invitations/accept/", {"token": secret}, format="json"
    )
    assert accepted.status_code == 200
    assert accepted.json() == {**accepted.json(), "slug": "acme", "role": "member"}
    # An invitation works once.
    again = as_user(invitee).post("/api/v1/invitations/accept/", {"token": secret}, format="json")
    assert again.status_code == 404


def test_revoked_invitations_cannot_be_accepted(acme, acme_invitation, as_user):
    from tests.factories import UserFactory

    invitation, secret = acme_invitation
    assert (
        as_user(acme.admin).delete(f"/api/v1/orgs/acme/invitations/{invitation.pk}/").status_code
        == 204
    )
    invitee = as_user(UserFactory(email="new@acme.example"))
    assert (
        invitee.post("/api/v1/invitations/accept/", {"token": secret}, format="json").status_code
        == 404
    )


def test_creating_an_organization_makes_you_its_owner(db, as_user):
    from tests.factories import UserFactory

    founder = as_user(UserFactory())
    created = founder.post("/api/v1/orgs/", {"name": "Wind Farm Data"}, format="json")
    assert created.status_code == 201
    assert created.json()["slug"] == "wind-farm-data"
    assert created.json()["role"] == "owner"
    second = founder.post("/api/v1/orgs/", {"name": "Wind Farm Data"}, format="json")
    assert second.json()["slug"] == "wind-farm-data-2"
