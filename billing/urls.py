from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("billing/webhook/", views.stripe_webhook, name="webhook"),
    path("billing/portal/", views.portal, name="portal"),
    path("networks/<str:slug>/", views.network_page, name="network"),
    path("networks/<str:slug>/subscribe/", views.checkout, name="checkout"),
    path("networks/<str:slug>/plan/", views.change_plan, name="change-plan"),
    path("networks/<str:slug>/subscribed/", views.checkout_success, name="success"),
]
