"""May this person hear this network now? And the short-lived tokens that say so.

An entitlement token is ``kdje.<payload>.<signature>``: base64url JSON naming the user, the
paid networks they may hear, their entitlement epoch and an expiry, signed with HMAC-SHA256
under a key derived from ``SECRET_KEY``. Verifying one is pure CPU; the only other check at
connect time, the user's current epoch, comes from the two-tier lookup cache. Anything that
shrinks a person's rights bumps their epoch, which voids every token minted before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts.models import User
from networks.lookup_cache import afresh_lookup, cached_lookup, forget, remember_fresh
from networks.models import Network
from networks.selectors import NetworkInfo

from .models import Subscription, SubscriptionStatus

TOKEN_PREFIX = "kdje."  # noqa: S105 (a prefix, not a secret)
ENTITLING = (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)


def user_group(user_id: int) -> str:
    """The channel-layer group of every open connection of one person."""
    return f"user.{user_id}"


# --- Entitlement ----------------------------------------------------------------------------


def subscription_entitled_until(subscription: Subscription, now: datetime) -> datetime | None:
    """Until when this subscription lets its owner listen (None: not now).

    A Stripe subscription that renews keeps its rights ``BILLING_RENEWAL_LEEWAY_SECONDS``
    past its period end, while the renewal's payment and webhook are on their way; one set
    to cancel at the period end, and an admin's grant, end exactly then.
    """
    period_end = subscription.current_period_end or now + timedelta(days=1)
    if subscription.status in ENTITLING:
        renews = (
            bool(subscription.stripe_subscription_id)
            and not subscription.granted_by_admin
            and not subscription.cancel_at_period_end
        )
        if renews:
            period_end += timedelta(seconds=settings.BILLING_RENEWAL_LEEWAY_SECONDS)
        return period_end if period_end > now else None
    if subscription.status == SubscriptionStatus.PAST_DUE and subscription.past_due_since:
        grace_end = subscription.past_due_since + timedelta(
            seconds=settings.BILLING_PAST_DUE_GRACE_SECONDS
        )
        return grace_end if grace_end > now else None
    return None


def entitlements_of_user_id(*, user_id: int) -> dict[int, datetime]:
    """Paid network id → until when the person may hear it, from all their subscriptions
    and grants together (database read; archived networks give no rights)."""
    now = timezone.now()
    rights: dict[int, datetime] = {}
    rows = Subscription.objects.filter(user_id=user_id, network__archived_at__isnull=True)
    for subscription in rows:
        until = subscription_entitled_until(subscription, now)
        if until is not None:
            rights[subscription.network_id] = max(until, rights.get(subscription.network_id, until))
    return rights


def entitlements_of(*, user: User) -> dict[int, datetime]:
    """Paid network id → until when the person may hear it (database read)."""
    return entitlements_of_user_id(user_id=user.pk)


def user_may_hear(*, user: User | None, network: Network) -> bool:
    """Public networks: anyone. Paid: an entitling subscription (cached until it changes)."""
    if network.is_public:
        return True
    if user is None or not user.is_authenticated:
        return False
    rights = cached_lookup(
        f"entitle:rights:{user.pk}",
        lambda: {k: v.timestamp() for k, v in entitlements_of(user=user).items()},
    )
    until = (rights or {}).get(network.pk)
    if until is not None and until > time.time():
        return True
    # A "no" is never taken from the cache: a page loaded while the subscription's webhook
    # commits could otherwise cache the old answer and keep offering Subscribe.
    until_now = entitlements_of(user=user).get(network.pk)
    return until_now is not None and until_now > timezone.now()


def _load_epoch(user_id: int) -> int | None:
    active = User.objects.filter(pk=user_id, is_active=True)
    return active.values_list("entitlement_epoch", flat=True).first()


async def aentitlement_epoch(user_id: int) -> int | None:
    """The person's current epoch (None: no such active person), from the shared cache.

    Not from process memory: a bump must hold on every process at once, or a revoked
    listener could reconnect to a process that remembers the old epoch.
    """
    return await afresh_lookup(f"entitle:epoch:{user_id}", lambda: _load_epoch(user_id))


def entitlements_grew(*, user_id: int) -> None:
    """Rights were added: only cached answers need recomputing (tokens stay valid)."""
    key = f"entitle:rights:{user_id}"
    forget([key])
    transaction.on_commit(lambda: forget([key]))


def entitlements_changed(*, user_id: int, network_ids: list[int] | None = None) -> None:
    """Void the person's tokens and close their affected connections on every process.

    ``network_ids`` None means every paid network. Runs after the current transaction commits.
    """
    User.objects.filter(pk=user_id).update(entitlement_epoch=F("entitlement_epoch") + 1)
    keys = [f"entitle:epoch:{user_id}", f"entitle:rights:{user_id}"]
    forget(keys)

    def broadcast() -> None:
        forget(keys)
        async_to_sync(get_channel_layer().group_send)(
            user_group(user_id), {"type": "entitlement.revoked", "networks": network_ids}
        )

    transaction.on_commit(broadcast)


# --- Tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntitlementToken:
    user_id: int
    network_ids: frozenset[int]
    epoch: int
    expires_at: float

    def allows(self, network: NetworkInfo) -> bool:
        return network.is_public or network.id in self.network_ids


class TokenInvalid(Exception):
    """Not a token we signed (or tampered with)."""


class TokenExpired(Exception):
    """Signed by us, but past its expiry or voided by a newer epoch: get a fresh one."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: str) -> str:
    return _b64(salted_hmac("katiedj.entitlement", payload, algorithm="sha256").digest())


def mint_entitlement_token(*, user: User) -> tuple[str, datetime, list[str]]:
    """A signed token for the person's paid networks; returns it, its expiry and the slugs.

    It expires after ``ENTITLEMENT_TOKEN_SECONDS`` or when the earliest subscription it relies
    on ends, whichever comes first.
    """
    rights = entitlements_of(user=user)
    now = timezone.now()
    expires_at = now + timedelta(seconds=settings.ENTITLEMENT_TOKEN_SECONDS)
    if rights:
        expires_at = min(expires_at, *rights.values())
    user.refresh_from_db(fields=["entitlement_epoch"])
    if user.is_active:
        # The connect that follows finds the epoch in the shared cache: no database query.
        remember_fresh(f"entitle:epoch:{user.pk}", user.entitlement_epoch)
    body = {
        "u": user.pk,
        "n": sorted(rights),
        "e": user.entitlement_epoch,
        "x": int(expires_at.timestamp()),
    }
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    slugs = list(
        Network.objects.filter(pk__in=rights).order_by("slug").values_list("slug", flat=True)
    )
    return f"{TOKEN_PREFIX}{payload}.{_signature(payload)}", expires_at, slugs


# A token is the prefix, a base64url payload and a 43-character base64url HMAC-SHA256. None
# of ours is longer (nor does a server read a request line or header that long).
_TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"([A-Za-z0-9_-]{2,8000})\.([A-Za-z0-9_-]{43})")
_INT64 = range(-(2**63), 2**63)


def _token_int(value: object) -> int:
    """``value`` if it is a JSON integer as we mint them (no bool, float or string)."""
    if type(value) is not int or value not in _INT64:
        raise TokenInvalid
    return value


def _refuse_constant(name: str) -> float:
    raise TokenInvalid  # NaN or Infinity: never in a token we signed


def read_entitlement_token(token: str) -> EntitlementToken:
    """Check the shape, signature and expiry (pure CPU); the epoch is checked by the caller.

    The token comes straight from a handshake: anything that is not exactly what we mint
    raises TokenInvalid (the caller answers 4401), never another exception.
    """
    match = _TOKEN_SHAPE.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise TokenInvalid  # checked first: compare_digest refuses non-ASCII text
    payload, signature = match.groups()
    if not hmac.compare_digest(_signature(payload), signature):
        raise TokenInvalid
    try:
        body = json.loads(_unb64(payload), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # bad base64 or UTF-8, not JSON, nested too deep
        raise TokenInvalid from None
    if not isinstance(body, dict) or not isinstance(body.get("n"), list):
        raise TokenInvalid
    parsed = EntitlementToken(
        user_id=_token_int(body.get("u")),
        network_ids=frozenset(_token_int(n) for n in body["n"]),
        epoch=_token_int(body.get("e")),
        expires_at=float(_token_int(body.get("x"))),
    )
    if parsed.expires_at <= time.time():
        raise TokenExpired
    return parsed


def token_fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (logs never hold the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def exchange_personal_token(raw_token: str) -> str | None:
    """Scripts may connect with a personal token: mint an entitlement token for its owner."""
    from accounts.selectors import personal_token_user

    user = personal_token_user(raw_token=raw_token)
    if user is None:
        return None
    token, _, _ = mint_entitlement_token(user=user)
    return token
