"""factory_boy factories for the models the tests build on."""

from __future__ import annotations

import factory

from accounts.models import Membership, Organization, Role, User
from networks.models import Network


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    password = factory.django.Password("correct horse battery")


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Provider {n}")
    slug = factory.Sequence(lambda n: f"provider-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.OWNER


class NetworkFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Network

    organization = factory.SubFactory(OrganizationFactory)
    slug = factory.Sequence(lambda n: f"network-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    is_public = True
