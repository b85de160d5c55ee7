"""People sign up with an email address, verify it, log in, and can reset a password."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase 42"


def link_in(message) -> str:
    return re.search(r"http://testserver(/\S+)", message.body).group(1)


def test_sign_up_verify_then_log_in():
    browser = Client()
    signup = browser.post(
        "/accounts/signup/",
        {"email": "Ada@Example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert signup.status_code == 302
    user = User.objects.get(email__iexact="ada@example.com")
    # Mandatory verification: not signed in until the address is confirmed.
    assert browser.get("/dashboard/").status_code == 302
    assert len(mail.outbox) == 1
    confirm = link_in(mail.outbox[0])
    browser.post(confirm)
    assert user.emailaddress_set.get().verified
    logged_in = browser.post("/accounts/login/", {"login": "ada@example.com", "password": PASSWORD})
    assert logged_in.status_code == 302
    assert browser.get("/dashboard/").status_code == 200


def test_an_unverified_address_cannot_log_in():
    browser = Client()
    browser.post(
        "/accounts/signup/",
        {"email": "bob@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    fresh = Client()
    attempt = fresh.post("/accounts/login/", {"login": "bob@example.com", "password": PASSWORD})
    assert attempt["Location"] == "/accounts/confirm-email/"
    assert fresh.get("/dashboard/").status_code == 302


def test_wrong_password_is_refused():
    from tests.factories import UserFactory

    UserFactory(email="carol@example.com")
    response = Client().post("/accounts/login/", {"login": "carol@example.com", "password": "nope"})
    assert response.status_code == 200
    assert b"not correct" in response.content or b"incorrect" in response.content.lower()


def test_password_reset_by_email():
    from allauth.account.models import EmailAddress

    from tests.factories import UserFactory

    user = UserFactory(email="dan@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    browser = Client()
    browser.post("/accounts/password/reset/", {"email": "dan@example.com"})
    assert len(mail.outbox) == 1
    reset_link = link_in(mail.outbox[0])
    form_page = browser.get(reset_link, follow=True)
    action = form_page.redirect_chain[-1][0] if form_page.redirect_chain else reset_link
    new_password = "another quite long passphrase 7"
    browser.post(action, {"password1": new_password, "password2": new_password})
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_log_out():
    from allauth.account.models import EmailAddress

    from tests.factories import UserFactory

    user = UserFactory(email="eve@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    browser = Client()
    browser.force_login(user)
    assert browser.get("/dashboard/tokens/").status_code == 200
    browser.post("/accounts/logout/")
    assert browser.get("/dashboard/tokens/").status_code == 302
