"""Two tenants: Acme (the victim, with a network and a key) and Globex (the attacker)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from accounts.models import Membership, Organization, Role, User
from accounts.services import invitation_create
from networks.models import ApiKey, Network
from networks.services import api_key_create
from tests.factories import MembershipFactory, NetworkFactory, OrganizationFactory, UserFactory


@dataclass
class Tenant:
    organization: Organization
    owner: User
    admin: User
    member: User
    network: Network
    api_key: ApiKey
    secret: str

    @property
    def slug(self) -> str:
        return self.organization.slug


def make_tenant(slug: str) -> Tenant:
    organization = OrganizationFactory(slug=slug, name=slug.title())
    people = {
        role: MembershipFactory(
            organization=organization, role=role, user=UserFactory(email=f"{role}@{slug}.example")
        ).user
        for role in (Role.OWNER, Role.ADMIN, Role.MEMBER)
    }
    network = NetworkFactory(organization=organization, slug=f"{slug}-live")
    api_key, secret = api_key_create(organization=organization, name="gen", networks=[network])
    return Tenant(
        organization,
        people[Role.OWNER],
        people[Role.ADMIN],
        people[Role.MEMBER],
        network,
        api_key,
        secret,
    )


@pytest.fixture
def acme(db) -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def globex(db) -> Tenant:
    return make_tenant("globex")


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def as_user():
    """``as_user(user)`` → an API client logged in (session) as that person."""
    return client_for


@pytest.fixture
def acme_invitation(acme):
    actor = Membership.objects.get(user=acme.owner, organization=acme.organization)
    invitation, secret = invitation_create(actor=actor, email="new@acme.example", role=Role.MEMBER)
    return invitation, secret
