"""``/api/v1/``: the management REST API (publishing is served by ``networks.ingest``)."""

from django.urls import path

from accounts import api as accounts_api
from billing import api as billing_api
from networks import api as networks_api
from simulator import api as simulator_api

urlpatterns = [
    path("orgs/", accounts_api.OrganizationListView.as_view(), name="org-list"),
    path("orgs/<slug:org>/", accounts_api.OrganizationDetailView.as_view(), name="org-detail"),
    path("orgs/<slug:org>/members/", accounts_api.MemberListView.as_view(), name="member-list"),
    path(
        "orgs/<slug:org>/members/<int:member_id>/",
        accounts_api.MemberDetailView.as_view(),
        name="member-detail",
    ),
    path(
        "orgs/<slug:org>/invitations/",
        accounts_api.InvitationListView.as_view(),
        name="invitation-list",
    ),
    path(
        "orgs/<slug:org>/invitations/<int:invitation_id>/",
        accounts_api.InvitationDetailView.as_view(),
        name="invitation-detail",
    ),
    path(
        "invitations/accept/",
        accounts_api.InvitationAcceptView.as_view(),
        name="invitation-accept",
    ),
    path("orgs/<slug:org>/networks/", networks_api.NetworkListView.as_view(), name="network-list"),
    path(
        "orgs/<slug:org>/networks/<str:slug>/",
        networks_api.NetworkDetailView.as_view(),
        name="network-detail",
    ),
    path(
        "orgs/<slug:org>/networks/<str:slug>/archive/",
        networks_api.NetworkArchiveView.as_view(),
        name="network-archive",
    ),
    path("orgs/<slug:org>/keys/", networks_api.ApiKeyListView.as_view(), name="key-list"),
    path(
        "orgs/<slug:org>/keys/<int:key_id>/",
        networks_api.ApiKeyDetailView.as_view(),
        name="key-detail",
    ),
    path(
        "orgs/<slug:org>/keys/<int:key_id>/rotate/",
        networks_api.ApiKeyRotateView.as_view(),
        name="key-rotate",
    ),
    path(
        "entitlements/token",
        billing_api.EntitlementTokenView.as_view(),
        name="entitlement-token",
    ),
    path(
        "orgs/<slug:org>/simulations/",
        simulator_api.SimulationListView.as_view(),
        name="simulation-list",
    ),
    path(
        "orgs/<slug:org>/simulations/<int:simulation_id>/",
        simulator_api.SimulationDetailView.as_view(),
        name="simulation-detail",
    ),
    path(
        "orgs/<slug:org>/simulations/<int:simulation_id>/<str:action>/",
        simulator_api.SimulationActionView.as_view(),
        name="simulation-action",
    ),
    path("orgs/<slug:org>/towns/", simulator_api.TownListView.as_view(), name="town-list"),
    path(
        "orgs/<slug:org>/towns/<int:town_id>/",
        simulator_api.TownDetailView.as_view(),
        name="town-detail",
    ),
    path("me/tokens/", accounts_api.PersonalTokenListView.as_view(), name="token-list"),
    path(
        "me/tokens/<int:token_id>/",
        accounts_api.PersonalTokenDetailView.as_view(),
        name="token-detail",
    ),
]
