from django.urls import path

from . import dashboard, views

app_name = "frontend"

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("networks/", views.catalogue, name="catalogue"),
    path("docs/", views.docs, name="docs"),
    path("account/", views.account, name="account"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    # The former personal-tokens page: now part of the account page, same form.
    path("dashboard/tokens/", views.account, name="tokens"),
    path("dashboard/<slug:org>/", dashboard.organization_home, name="org"),
    path("dashboard/<slug:org>/networks/<str:slug>/", dashboard.network_detail, name="network"),
    path(
        "dashboard/<slug:org>/networks/<str:slug>/archive/",
        dashboard.network_archive_toggle,
        name="network-archive",
    ),
    path(
        "dashboard/<slug:org>/networks/<str:slug>/price/",
        dashboard.network_price,
        name="network-price",
    ),
    path(
        "dashboard/<slug:org>/networks/<str:slug>/price/<str:interval>/remove/",
        dashboard.network_price_remove,
        name="network-price-remove",
    ),
    path("dashboard/<slug:org>/keys/", dashboard.keys, name="keys"),
    path("dashboard/<slug:org>/keys/<int:key_id>/revoke/", dashboard.key_revoke, name="key-revoke"),
    path("dashboard/<slug:org>/keys/<int:key_id>/rotate/", dashboard.key_rotate, name="key-rotate"),
    path("dashboard/<slug:org>/members/", dashboard.members, name="members"),
    path("dashboard/<slug:org>/simulations/", dashboard.simulations, name="simulations"),
    path(
        "dashboard/<slug:org>/simulations/<int:simulation_id>/<str:action>/",
        dashboard.simulation_action,
        name="simulation-action",
    ),
    path("dashboard/<slug:org>/towns/", dashboard.town_upload_page, name="town-upload"),
    path(
        "dashboard/<slug:org>/towns/<int:town_id>/delete/",
        dashboard.town_delete_page,
        name="town-delete",
    ),
    path(
        "dashboard/<slug:org>/members/<int:member_id>/",
        dashboard.member_update,
        name="member-update",
    ),
    path(
        "dashboard/<slug:org>/invitations/<int:invitation_id>/cancel/",
        dashboard.invitation_cancel,
        name="invitation-cancel",
    ),
    path("invitations/<str:token>/", dashboard.invitation_accept_page, name="invitation-accept"),
]
