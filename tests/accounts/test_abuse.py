"""Abuse of the account features: guessing passwords, mail bombs, forged headers, stale tokens.

Every resource a caller can spend (login attempts, emails) has a bound per caller, and what
a credential opened closes when the password it stood behind is reset.
"""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import Invitation, Membership, Organization, PersonalToken, Role, User
from accounts.services import invitation_create, personal_token_create
from tests.api.conftest import make_tenant
from tests.factories import MembershipFactory, NetworkFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # UserFactory's
NEW_PASSWORD = "another quite long passphrase 7"


@pytest.fixture
def acme(db):
    return make_tenant("acme")


@pytest.fixture
def globex(db):
    return make_tenant("globex")


def browser_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_for(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def tokens_answer(secret: str) -> int:
    """The REST API's status for a request authenticated with personal token ``secret``."""
    client = APIClient()
    return client.get("/api/v1/me/tokens/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code


def verified(user: User) -> User:
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user


def admin_login(client: Client, email: str, password: str):
    return client.post(
        "/admin/login/?next=/admin/", {"username": email, "password": password, "next": "/admin/"}
    )


def logged_in_to_admin(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


# --- 1. The admin's login is throttled like the site's -------------------------------------


def test_the_admin_login_admits_staff_but_stops_guessing_like_the_site_login():
    staff = UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)
    typo = Client()
    assert admin_login(typo, staff.email, "wrong").status_code == 200
    assert admin_login(typo, staff.email, PASSWORD)["Location"] == "/admin/"
    assert logged_in_to_admin(typo)

    target = UserFactory(email="root@example.com", is_staff=True, is_superuser=True)
    attacker = Client()
    for attempt in range(40):
        admin_login(attacker, target.email, f"guess {attempt}")
    refused = admin_login(attacker, target.email, PASSWORD)
    assert refused.status_code in (200, 429)
    assert not logged_in_to_admin(attacker)
    # The same counters as /accounts/login/: guesses cannot be split between the two forms.
    elsewhere = Client(REMOTE_ADDR="192.0.2.7")  # another address: only the account's count
    site = elsewhere.post("/accounts/login/", {"login": target.email, "password": PASSWORD})
    assert b"Too many failed login attempts" in site.content


def test_failed_admin_logins_count_per_address_and_say_why():
    staff = UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)
    for attempt in range(5):
        admin_login(Client(), staff.email, f"guess {attempt}")
    page = admin_login(Client(), staff.email, PASSWORD)
    assert page.status_code == 200
    assert "Too many failed login attempts" in page.content.decode()


def test_an_address_flooding_the_admin_login_gets_429():
    UserFactory(email="ops@example.com", is_staff=True)
    attacker = Client()
    statuses = [admin_login(attacker, f"nobody{n}@example.com", "x").status_code for n in range(31)]
    assert statuses[:30] == [200] * 30
    assert statuses[30] == 429


# --- 2. Organization names refuse control characters; subjects are header-safe -------------

BAD_NAMES = [
    "Acme\rBcc: victim@example.com",
    "Acme\nSensors",
    "Acme\x00",
    "Acme\x1b[31m",
    "\u202eemca",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_organization_names_refuse_control_characters_everywhere(name):
    owner = UserFactory()
    with pytest.raises(ValidationError):
        Organization(name=name, slug="bad").full_clean()

    api = api_for(owner)
    created = api.post("/api/v1/orgs/", {"name": name}, format="json")
    assert created.status_code == 400
    assert created.json()["code"] == "invalid" and "name" in created.json()["fields"]

    page = browser_for(owner).post("/dashboard/", {"name": name})
    assert page.status_code == 200
    assert "control characters" in page.content.decode().lower()
    assert not Organization.objects.exists()

    mine = MembershipFactory(user=owner, organization=OrganizationFactory(slug="mine")).organization
    renamed = api.patch("/api/v1/orgs/mine/", {"name": name}, format="json")
    assert renamed.status_code == 400
    mine.refresh_from_db()
    assert mine.name != name

    # Letters of any script, punctuation and emoji (joiners included) stay welcome.
    ordinary = "Café Müller & Söhne — 北京 👩\u200d🔬"
    assert api.patch("/api/v1/orgs/mine/", {"name": ordinary}, format="json").status_code == 200
    assert browser_for(owner).post("/dashboard/", {"name": ordinary}).status_code == 302


def test_an_invitation_from_an_organization_with_a_forged_header_is_still_sent_safely(acme):
    # A name stored before validation existed (or written around it) must not break the email.
    Organization.objects.filter(pk=acme.organization.pk).update(
        name="Acme\r\nBcc: everyone@example.com\r\n\r\nPay here: http://evil.example"
    )
    response = browser_for(acme.admin).post(
        "/dashboard/acme/members/", {"email": "joiner@example.com", "role": "member"}
    )
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["joiner@example.com"] and not message.bcc
    assert "\r" not in message.subject and "\n" not in message.subject
    assert message.subject.startswith("[KatieDJ] ")
    message.message()  # builds the headers: raises BadHeaderError on a forged one
    assert "\r" not in message.body
    assert "\nBcc:" not in message.body and "\nPay here" not in message.body


def test_the_invitation_email_says_which_words_are_the_inviters(acme):
    Organization.objects.filter(pk=acme.organization.pk).update(name="Your bank: verify now")
    api_for(acme.admin).post(
        "/api/v1/orgs/acme/invitations/", {"email": "joiner@example.com"}, format="json"
    )
    body = mail.outbox[0].body
    assert "“Your bank: verify now”" in body
    assert acme.admin.email in body
    assert "not by KatieDJ" in body
    assert "ignore this email" in body


# --- 3. Another organization's invitation is 404 in the dashboard too ----------------------


def test_cancelling_another_organizations_invitation_is_404(acme, globex):
    actor = Membership.objects.get(organization=acme.organization, user=acme.owner)
    invitation, _ = invitation_create(actor=actor, email="new@acme.example", role=Role.MEMBER)
    attacker = browser_for(globex.owner)
    page = attacker.post(f"/dashboard/globex/invitations/{invitation.pk}/cancel/")
    assert page.status_code == 404
    api = api_for(globex.owner).delete(f"/api/v1/orgs/globex/invitations/{invitation.pk}/")
    assert api.status_code == 404
    assert api.json() == {"error": "Not found.", "code": "not_found"}
    invitation.refresh_from_db()
    assert invitation.revoked_at is None
    # The organization's own admins still cancel it.
    own = browser_for(acme.admin).post(f"/dashboard/acme/invitations/{invitation.pk}/cancel/")
    assert own.status_code == 302
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None


# --- 4. Invitation emails are bounded per organization, per address and per inviter --------


def test_a_burst_of_invitations_stops_at_the_organizations_hourly_limit(acme):
    api = api_for(acme.admin)
    statuses = [
        api.post(
            "/api/v1/orgs/acme/invitations/", {"email": f"target{n}@example.com"}, format="json"
        )
        for n in range(30)
    ]
    assert [r.status_code for r in statuses].count(201) == 20
    refused = statuses[-1]
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert set(refused.json()) == {"error", "code"}
    assert "invitations" in refused.json()["error"]
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert len(mail.outbox) == 20
    assert acme.organization.invitations.count() == 20


def test_one_address_gets_at_most_three_invitations_a_day_whoever_sends_them(acme, globex):
    for tenant in (acme, acme, globex):
        invited = api_for(tenant.admin).post(
            f"/api/v1/orgs/{tenant.slug}/invitations/",
            {"email": "Victim@Example.com"},
            format="json",
        )
        assert invited.status_code == 201
    again = api_for(globex.owner).post(
        "/api/v1/orgs/globex/invitations/", {"email": "victim@example.com"}, format="json"
    )
    assert again.status_code == 429
    assert 3600 < int(again["Retry-After"]) <= 86400
    page = browser_for(acme.owner).post(
        "/dashboard/acme/members/", {"email": "victim@example.com", "role": "member"}
    )
    assert page.status_code == 429
    assert "victim@example.com" in page.content.decode()
    assert "try again" in page.content.decode()
    assert len(mail.outbox) == 3
    assert Invitation.objects.filter(email="victim@example.com").count() == 3
    # Another address is not affected.
    other = api_for(globex.owner).post(
        "/api/v1/orgs/globex/invitations/", {"email": "colleague@example.com"}, format="json"
    )
    assert other.status_code == 201


def test_new_organizations_do_not_buy_more_invitations(settings):
    settings.INVITATIONS_PER_INVITER_PER_DAY = 4
    spammer = UserFactory()
    api = api_for(spammer)
    sent = 0
    for n in range(3):
        org = api.post("/api/v1/orgs/", {"name": f"Spam {n}"}, format="json").json()["slug"]
        for m in range(3):
            response = api.post(
                f"/api/v1/orgs/{org}/invitations/",
                {"email": f"t{n}-{m}@example.com"},
                format="json",
            )
            sent += response.status_code == 201
    assert sent == 4
    assert len(mail.outbox) == 4


def test_the_dashboard_explains_an_organizations_limit(acme, settings):
    settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR = 1
    browser = browser_for(acme.admin)
    first = browser.post("/dashboard/acme/members/", {"email": "a@example.com", "role": "member"})
    assert first.status_code == 302
    second = browser.post("/dashboard/acme/members/", {"email": "b@example.com", "role": "member"})
    assert second.status_code == 429
    assert second["Retry-After"]
    text = second.content.decode()
    assert "Acme" in text and "1 invitation" in text and "try again" in text
    assert 'value="b@example.com"' in text  # the form keeps what was typed
    assert len(mail.outbox) == 1


def test_a_refused_invitation_spends_no_other_allowance(acme, settings):
    settings.INVITATIONS_PER_ADDRESS_PER_DAY = 1
    settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR = 3
    api = api_for(acme.admin)
    url = "/api/v1/orgs/acme/invitations/"
    assert api.post(url, {"email": "one@example.com"}, format="json").status_code == 201
    for _ in range(5):
        assert api.post(url, {"email": "one@example.com"}, format="json").status_code == 429
    # The five refusals did not use up the organization's hourly allowance.
    assert api.post(url, {"email": "two@example.com"}, format="json").status_code == 201
    assert api.post(url, {"email": "three@example.com"}, format="json").status_code == 201


# --- 5. A password reset (or change) revokes personal tokens --------------------------------


def link_in(message) -> str:
    return re.search(r"http://testserver(/\S+)", message.body).group(1)


def reset_password(email: str) -> None:
    browser = Client()
    browser.post("/accounts/password/reset/", {"email": email})
    link = link_in(mail.outbox[-1])
    form_page = browser.get(link, follow=True)
    action = form_page.redirect_chain[-1][0] if form_page.redirect_chain else link
    browser.post(action, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})


def test_a_password_reset_revokes_every_personal_token_and_says_so():
    person = verified(UserFactory(email="dan@example.com"))
    _, first = personal_token_create(user=person, name="laptop")
    _, second = personal_token_create(user=person, name="nightly")
    bystander = UserFactory()
    _, theirs = personal_token_create(user=bystander, name="theirs")
    epoch = person.entitlement_epoch
    assert tokens_answer(first) == 200

    reset_password(person.email)

    person.refresh_from_db()
    assert person.check_password(NEW_PASSWORD)
    assert "personal tokens" in mail.outbox[0].body  # the email with the reset link says so
    assert not PersonalToken.objects.filter(user=person, revoked_at__isnull=True).exists()
    assert tokens_answer(first) == tokens_answer(second) == 401
    # Entitlement tokens minted before the reset are void (the epoch they carry is stale).
    assert person.entitlement_epoch > epoch
    assert tokens_answer(theirs) == 200  # nobody else's


def test_a_password_change_revokes_personal_tokens_too():
    person = verified(UserFactory(email="eve@example.com"))
    _, secret = personal_token_create(user=person, name="laptop")
    browser = browser_for(person)
    changed = browser.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        follow=True,
    )
    assert changed.status_code == 200
    assert "personal token" in changed.content.decode()
    assert tokens_answer(secret) == 401
    assert browser.get("/account/").status_code == 200  # the person stays logged in here


@pytest.fixture
async def _close_worker_thread_connections():
    """The async test reaches the database from asgiref's worker thread: close what it opened
    there, or PostgreSQL refuses to drop the test database at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_worker_thread_connections")
async def test_a_password_reset_closes_listening_connections_opened_with_a_personal_token():
    from billing.services import subscription_grant
    from katiedj.asgi import application

    person = await sync_to_async(lambda: verified(UserFactory(email="fay@example.com")))()
    premium = await sync_to_async(NetworkFactory)(slug="premium", is_public=False)
    await sync_to_async(subscription_grant)(user=person, network=premium)
    _, secret = await sync_to_async(personal_token_create)(user=person, name="script")
    communicator = WebsocketCommunicator(application, f"/ws/networks/premium/?token={secret}")
    connected, _ = await communicator.connect()
    assert connected

    await sync_to_async(reset_password)(person.email)

    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close"
    assert message["code"] == 4403
    again = WebsocketCommunicator(application, f"/ws/networks/premium/?token={secret}")
    await again.connect()
    closed = await again.receive_output(timeout=3)
    assert closed["code"] == 4401
