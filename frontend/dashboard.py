"""Provider dashboard pages under ``/dashboard/``: thin views over the services.

Every page resolves the visitor's membership first, so another organization's objects are
404 exactly like missing ones; role checks answer 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import Membership, Role
from accounts.selectors import (
    Forbidden,
    NotFound,
    invitation_get_for_org,
    membership_get,
    organization_members,
    organizations_of,
    role_at_least,
)
from accounts.services import (
    InvitationRateLimited,
    MembershipError,
    invitation_accept,
    invitation_create,
    invitation_revoke,
    invitation_send,
    membership_change_role,
    membership_remove,
    organization_create,
)
from billing.models import Price
from billing.selectors import MonthlyTakings, revenue_by_network, takings_by_month
from billing.services import BillingError, price_remove, price_set
from billing.stripe_gateway import billing_configured
from networks.models import ApiKey, Network
from networks.selectors import api_key_get_for_org, api_keys_of, network_get_for_org, networks_of
from networks.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    network_archive,
    network_create,
    network_unarchive,
    network_update,
)
from simulator.models import Simulation, SimulationStatus, Town
from simulator.selectors import simulation_get_for_org, simulations_of
from simulator.services import simulation_create, simulation_set_status
from simulator.towns import (
    TownError,
    town_delete,
    town_get_for_org,
    town_upload,
    towns_visible_to,
)
from streaming.selectors import listeners_now

from .charts import BarChart, bar_chart
from .forms import (
    ApiKeyForm,
    InvitationForm,
    NetworkForm,
    OrganizationForm,
    PriceForm,
    RoleForm,
    SimulationForm,
    TownUploadForm,
)
from .selectors import Usage, usage_window

View = Callable[..., HttpResponse]


def org_view(minimum: Role | None = None) -> Callable[[View], View]:
    """Resolve ``org`` to the visitor's membership (404 if none; 403 below ``minimum``)."""

    def decorate(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, org: str, **kwargs: Any) -> HttpResponse:
            try:
                membership = membership_get(user=request.user, organization_slug=org)
            except NotFound:
                raise Http404 from None
            if minimum is not None and not role_at_least(membership.role, minimum):
                raise PermissionDenied
            try:
                return view(request, membership, **kwargs)
            except (
                NotFound,
                Network.DoesNotExist,
                ApiKey.DoesNotExist,
                Membership.DoesNotExist,
                Simulation.DoesNotExist,
                Town.DoesNotExist,
            ):
                raise Http404 from None
            except Forbidden:
                raise PermissionDenied from None

        return wrapper

    return decorate


def _publish_example(request: HttpRequest, created: tuple[ApiKey, str] | None) -> str:
    if created is None:
        return ""
    api_key, secret = created
    network = api_key.networks.first()
    body = json.dumps({"network": network.slug if network else "<slug>", "data": {"hello": 1}})
    return (
        f"curl -X POST {request.build_absolute_uri('/api/publish')} \\\n"
        f"     -H 'API-KEY: {secret}' -H 'Content-Type: application/json' \\\n"
        f"     -d '{body}'"
    )


def _page(request: HttpRequest, membership: Membership, template: str, **context: Any):
    context.setdefault("tab", template.removesuffix(".html"))
    context.update(
        membership=membership,
        organization=membership.organization,
        can_manage=role_at_least(membership.role, Role.ADMIN),
        memberships=organizations_of(user=request.user),
        base_url=request.build_absolute_uri("/").rstrip("/"),
    )
    return render(request, f"frontend/dashboard/{template}", context)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Your first organization, or a form to create one."""
    if request.method == "POST":
        form = OrganizationForm(request.POST)
        if form.is_valid():
            organization = organization_create(name=form.cleaned_data["name"], owner=request.user)
            return redirect("frontend:org", org=organization.slug)
    else:
        first = organizations_of(user=request.user).order_by("organization__name").first()
        if first is not None:
            return redirect("frontend:org", org=first.organization.slug)
        form = OrganizationForm()
    return render(request, "frontend/dashboard/start.html", {"form": form})


def _usage_chart(usage: Usage) -> BarChart:
    """The hourly bar chart of messages published."""
    hours = len(usage.hours)
    return bar_chart(
        [(f"{u.hour:%H}:00", u.messages) for u in usage.hours], every=max(hours // 8, 1)
    )


@org_view()
def organization_home(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Networks with 24-hour usage, listeners now, subscribers, revenue and this month's
    takings; create one."""
    form = NetworkForm()
    if request.method == "POST":
        if not role_at_least(membership.role, Role.ADMIN):
            raise PermissionDenied
        form = NetworkForm(request.POST)
        if form.is_valid():
            network = network_create(organization=membership.organization, **form.cleaned_data)
            messages.success(request, f"Network {network.slug} created.")
            return redirect("frontend:network", org=membership.organization.slug, slug=network.slug)
    networks = list(networks_of(organization_id=membership.organization_id))
    ids = [n.id for n in networks]
    usage = usage_window(network_ids=ids, hours=24)
    revenue = revenue_by_network(network_ids=ids)
    listeners = listeners_now(ids)
    net_month = _net_this_month(takings_by_month(network_ids=ids, months=1))
    rows = [
        {
            "network": network,
            "messages": usage.of(network.id)["messages"],
            "bytes": usage.of(network.id)["bytes"],
            "listeners": listeners.get(network.id, 0),
            "revenue": revenue[network.id],
            "net_month": sorted(net_month.get(network.id, {}).items()),
        }
        for network in networks
    ]
    monthly: dict[str, int] = {}
    takings: dict[str, int] = {}
    for row in rows:
        for currency, cents in row["revenue"].monthly:
            monthly[currency] = monthly.get(currency, 0) + cents
        for currency, cents in row["net_month"]:
            takings[currency] = takings.get(currency, 0) + cents
    totals = {
        "networks": sum(1 for n in networks if not n.is_archived),
        "messages": sum(row["messages"] for row in rows),
        "listeners": sum(row["listeners"] for row in rows),
        "subscribers": sum(row["revenue"].subscribers for row in rows),
        "monthly": sorted(monthly.items()),
        "net_month": sorted(takings.items()),
    }
    subscribers_chart, revenue_chart, currency = _paid_charts(rows, totals["monthly"])
    return _page(
        request,
        membership,
        "organization.html",
        tab="networks",
        rows=rows,
        form=form,
        usage_chart=_usage_chart(usage),
        subscribers_chart=subscribers_chart,
        revenue_chart=revenue_chart,
        revenue_currency=currency,
        totals=totals,
    )


def _net_this_month(takings: list[MonthlyTakings]) -> dict[int, dict[str, int]]:
    """Network id → currency → net collected in the current calendar month (the selector's
    ``months`` is counted in 31-day months, so it may also return last month's rows)."""
    this_month = timezone.localdate().replace(day=1)
    net: dict[int, dict[str, int]] = {}
    for row in takings:
        if row.month == this_month:
            by_currency = net.setdefault(row.network_id, {})
            by_currency[row.currency] = by_currency.get(row.currency, 0) + row.net
    return net


PAID_CHART_NETWORKS = 12


def _paid_charts(
    rows: list[dict], monthly: list[tuple[str, int]]
) -> tuple[BarChart, BarChart, str]:
    """Subscribers and monthly revenue (in the organization's main currency, whole units) of
    its best-selling paid networks."""
    currency = max(monthly, key=lambda pair: pair[1])[0] if monthly else ""
    paid = [row for row in rows if not row["network"].is_public]
    paid.sort(key=lambda row: (-row["revenue"].subscribers, row["network"].slug))
    paid = paid[:PAID_CHART_NETWORKS]
    labels = [row["network"].slug[:14] for row in paid]
    subscribers = bar_chart(
        [(label, row["revenue"].subscribers) for label, row in zip(labels, paid, strict=True)],
        every=1,
    )
    revenue = bar_chart(
        [
            (label, round(row["revenue"].monthly_cents.get(currency, 0) / 100))
            for label, row in zip(labels, paid, strict=True)
        ],
        every=1,
    )
    return subscribers, revenue, currency.upper()


@org_view()
def network_detail(request: HttpRequest, membership: Membership, slug: str) -> HttpResponse:
    network = network_get_for_org(organization_id=membership.organization_id, slug=slug)
    form = NetworkForm(instance=network)
    if request.method == "POST":
        if not role_at_least(membership.role, Role.ADMIN):
            raise PermissionDenied
        form = NetworkForm(request.POST, instance=network)
        if form.is_valid():
            changes = {k: v for k, v in form.cleaned_data.items() if k != "slug"}
            network_update(network=Network.objects.get(pk=network.pk), **changes)
            messages.success(request, "Saved.")
            return redirect("frontend:network", org=membership.organization.slug, slug=slug)
    usage = usage_window(network_ids=[network.id], hours=48)
    return _page(
        request,
        membership,
        "network.html",
        tab="networks",
        network=network,
        form=form,
        usage_chart=_usage_chart(usage),
        totals=usage.of(network.id),
        listeners=listeners_now([network.id]).get(network.id, 0),
        revenue=revenue_by_network(network_ids=[network.id])[network.id],
        takings=[] if network.is_public else takings_by_month(network_ids=[network.id]),
        prices=Price.objects.filter(network=network, active=True),
        price_form=PriceForm(),
        billing_configured=billing_configured(),
    )


@require_POST
@org_view(minimum=Role.ADMIN)
def network_price(request: HttpRequest, membership: Membership, slug: str) -> HttpResponse:
    """Set a paid network's price (a new Stripe Price; current subscribers keep theirs)."""
    network = network_get_for_org(organization_id=membership.organization_id, slug=slug)
    form = PriceForm(request.POST)
    if form.is_valid():
        try:
            price_set(
                network=network,
                interval=form.cleaned_data["interval"],
                amount=form.cents(),
                currency=form.cleaned_data["currency"],
            )
            messages.success(request, "Price saved.")
        except BillingError as error:
            messages.error(request, str(error))
    else:
        problems = "; ".join(
            f"{form[name].label}: {' '.join(errors)}" for name, errors in form.errors.items()
        )
        messages.error(request, f"The price was not saved. {problems}")
    return redirect("frontend:network", org=membership.organization.slug, slug=slug)


@require_POST
@org_view(minimum=Role.ADMIN)
def network_price_remove(
    request: HttpRequest, membership: Membership, slug: str, interval: str
) -> HttpResponse:
    """Stop selling one interval: its subscribers keep it until their period ends."""
    network = network_get_for_org(organization_id=membership.organization_id, slug=slug)
    try:
        count = price_remove(network=network, interval=interval)
        messages.success(
            request,
            f"The {interval}ly price is no longer sold; {count} subscriber(s) keep it until "
            "their paid period ends.",
        )
    except BillingError as error:
        messages.error(request, str(error))
    return redirect("frontend:network", org=membership.organization.slug, slug=slug)


@require_POST
@org_view(minimum=Role.ADMIN)
def network_archive_toggle(request: HttpRequest, membership: Membership, slug: str):
    network = network_get_for_org(organization_id=membership.organization_id, slug=slug)
    if network.is_archived:
        network_unarchive(network=network)
        messages.success(request, f"{slug} restored: it accepts publishes and listeners again.")
    else:
        network_archive(network=network)
        paid = "" if network.is_public else " Its subscriptions end now, unused time refunded."
        messages.success(
            request, f"{slug} archived: publishes get 409, listeners were closed.{paid}"
        )
    return redirect("frontend:network", org=membership.organization.slug, slug=slug)


@org_view()
def keys(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Publisher keys; admins create them here (the secret is shown once)."""
    organization = membership.organization
    form = ApiKeyForm(organization_id=organization.id)
    created: tuple[ApiKey, str] | None = None
    if request.method == "POST":
        if not role_at_least(membership.role, Role.ADMIN):
            raise PermissionDenied
        form = ApiKeyForm(request.POST, organization_id=organization.id)
        if form.is_valid():
            data = form.cleaned_data
            created = api_key_create(
                organization=organization,
                name=data["name"],
                networks=list(data["networks"]),
                scopes=data["scopes"],
                expires_at=data["expires_at"],
                created_by=request.user,
            )
            form = ApiKeyForm(organization_id=organization.id)
    return _page(
        request,
        membership,
        "keys.html",
        keys=api_keys_of(organization_id=organization.id),
        form=form,
        created=created,
        example=_publish_example(request, created),
    )


@require_POST
@org_view(minimum=Role.ADMIN)
def key_revoke(request: HttpRequest, membership: Membership, key_id: int) -> HttpResponse:
    api_key = api_key_get_for_org(organization_id=membership.organization_id, key_id=key_id)
    api_key_revoke(api_key=api_key)
    messages.success(request, f"Key {api_key.prefix}… revoked; publishes with it now fail.")
    return redirect("frontend:keys", org=membership.organization.slug)


@require_POST
@org_view(minimum=Role.ADMIN)
def key_rotate(request: HttpRequest, membership: Membership, key_id: int) -> HttpResponse:
    api_key = api_key_get_for_org(organization_id=membership.organization_id, key_id=key_id)
    try:
        created = api_key_rotate(api_key=api_key, created_by=request.user)
    except ValueError as error:
        messages.error(request, str(error))
        return redirect("frontend:keys", org=membership.organization.slug)
    messages.success(request, f"Key {api_key.prefix}… keeps working for 24 hours.")
    return _page(
        request,
        membership,
        "keys.html",
        keys=api_keys_of(organization_id=membership.organization_id),
        form=ApiKeyForm(organization_id=membership.organization_id),
        created=created,
        example=_publish_example(request, created),
    )


@org_view()
def members(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Members and roles; invitations (admins)."""
    organization = membership.organization
    form = InvitationForm()
    limited: InvitationRateLimited | None = None
    if request.method == "POST":
        form = InvitationForm(request.POST)
        if form.is_valid():
            try:
                invitation, secret = invitation_create(
                    actor=membership,
                    email=form.cleaned_data["email"],
                    role=Role(form.cleaned_data["role"]),
                )
            except InvitationRateLimited as error:
                limited = error
                form.add_error(None, str(error))
            else:
                accept_url = request.build_absolute_uri(
                    reverse("frontend:invitation-accept", kwargs={"token": secret})
                )
                invitation_send(invitation=invitation, secret=secret, accept_url=accept_url)
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("frontend:members", org=organization.slug)
    invitations = organization.invitations.filter(accepted_at__isnull=True, revoked_at__isnull=True)
    response = _page(
        request,
        membership,
        "members.html",
        members=organization_members(organization=organization),
        invitations=[i for i in invitations if i.is_pending]
        if role_at_least(membership.role, Role.ADMIN)
        else [],
        form=form,
        roles=Role.choices,
    )
    if limited is not None:
        response.status_code = 429
        response["Retry-After"] = str(limited.retry_after)
    return response


@require_POST
@org_view()
def member_update(request: HttpRequest, membership: Membership, member_id: int) -> HttpResponse:
    target = organization_members(organization=membership.organization).get(pk=member_id)
    try:
        if request.POST.get("action") == "remove":
            membership_remove(actor=membership, target=target)
            messages.success(request, f"{target.user.email} removed.")
            if target.pk == membership.pk:
                return redirect("frontend:dashboard")
        else:
            form = RoleForm(request.POST)
            if form.is_valid():
                membership_change_role(
                    actor=membership, target=target, role=Role(form.cleaned_data["role"])
                )
                messages.success(
                    request, f"{target.user.email} is now {form.cleaned_data['role']}."
                )
    except MembershipError as error:
        messages.error(request, str(error))
    return redirect("frontend:members", org=membership.organization.slug)


@require_POST
@org_view(minimum=Role.ADMIN)
def invitation_cancel(request: HttpRequest, membership: Membership, invitation_id: int):
    invitation = invitation_get_for_org(
        organization_id=membership.organization_id, invitation_id=invitation_id
    )
    invitation_revoke(actor=membership, invitation=invitation)
    messages.success(request, f"Invitation to {invitation.email} cancelled.")
    return redirect("frontend:members", org=membership.organization.slug)


@login_required
def invitation_accept_page(request: HttpRequest, token: str) -> HttpResponse:
    if request.method == "POST":
        try:
            membership = invitation_accept(user=request.user, secret=token)
        except NotFound:
            raise Http404("This invitation is not valid for your account.") from None
        messages.success(request, f"Welcome to {membership.organization.name}.")
        return redirect("frontend:org", org=membership.organization.slug)
    return render(request, "frontend/dashboard/invitation.html", {"token": token})


SIMULATION_ACTIONS = {
    "start": SimulationStatus.RUNNING,
    "pause": SimulationStatus.PAUSED,
    "stop": SimulationStatus.STOPPED,
}


@org_view()
def simulations(request: HttpRequest, membership: Membership) -> HttpResponse:
    """The organization's traffic simulations; admins create, start, pause and stop them."""
    organization_id = membership.organization_id
    form = SimulationForm(organization_id=organization_id)
    if request.method == "POST":
        if not role_at_least(membership.role, Role.ADMIN):
            raise PermissionDenied
        form = SimulationForm(request.POST, organization_id=organization_id)
        if form.is_valid():
            data = form.cleaned_data
            try:
                simulation = simulation_create(
                    network_id=data["network"].id,
                    name=data["name"],
                    topology=data["topology"],
                    topology_options=form.topology_options(),
                    publish_interval_seconds=data["publish_interval_seconds"],
                )
            except (ValidationError, ValueError) as error:
                form.add_error(None, "; ".join(getattr(error, "messages", [str(error)])))
            else:
                messages.success(request, f"Simulation {simulation.name} created: start it below.")
                return redirect("frontend:simulations", org=membership.organization.slug)
    return _page(
        request,
        membership,
        "simulations.html",
        simulations=simulations_of(organization_id=organization_id),
        form=form,
        towns=towns_visible_to(organization_id=organization_id),
        town_form=TownUploadForm(),
    )


@require_POST
@org_view(minimum=Role.ADMIN)
def simulation_action(
    request: HttpRequest, membership: Membership, simulation_id: int, action: str
) -> HttpResponse:
    """Start (or resume), pause or stop a simulation."""
    if action not in SIMULATION_ACTIONS:
        raise Http404
    simulation = simulation_get_for_org(
        organization_id=membership.organization_id, simulation_id=simulation_id
    )
    try:
        simulation_set_status(simulation=simulation, status=SIMULATION_ACTIONS[action])
    except ValueError as error:  # the model refused its configuration (CFL, turning ratios)
        messages.error(request, f"{simulation.name} cannot start: {error}")
    else:
        messages.success(request, f"{simulation.name} is now {simulation.status}.")
    return redirect("frontend:simulations", org=membership.organization.slug)


# --- Towns (issue 14): upload a SUMO network, delete one --------------------------------------


@require_POST
@org_view(minimum=Role.ADMIN)
def town_upload_page(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Store an uploaded SUMO network; a worker imports it (its state shows on the page)."""
    form = TownUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        errors = [e for field_errors in form.errors.values() for e in field_errors]
        messages.error(request, "Town not uploaded: " + " ".join(errors))
    elif form.cleaned_data["file"].size > settings.TOWN_MAX_BYTES:
        messages.error(request, f"A town may have at most {settings.TOWN_MAX_BYTES:,} bytes.")
    else:
        upload = form.cleaned_data["file"]
        try:
            town = town_upload(
                organization_id=membership.organization_id,
                name=form.cleaned_data["name"],
                file_name=upload.name or "",
                data=upload.read(),
            )
        except TownError as error:
            messages.error(request, f"Town not uploaded: {error}")
        else:
            messages.success(request, f"Town {town.name} uploaded: it is being imported.")
    return redirect("frontend:simulations", org=membership.organization.slug)


@require_POST
@org_view(minimum=Role.ADMIN)
def town_delete_page(request: HttpRequest, membership: Membership, town_id: int) -> HttpResponse:
    town = town_get_for_org(organization_id=membership.organization_id, town_id=town_id)
    if town.builtin:
        raise PermissionDenied
    try:
        town_delete(town=town)
    except TownError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Town {town.name} deleted.")
    return redirect("frontend:simulations", org=membership.organization.slug)
