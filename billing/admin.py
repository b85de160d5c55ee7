"""Staff tools. For a Stripe subscription the admin can only ask Stripe (cancel, resync):
the row mirrors Stripe and cannot be edited into a state Stripe doesn't have. Grants (no
Stripe) are edited freely; access follows every change (``billing.access``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .errors import BillingError
from .models import Customer, Payment, Price, Subscription, WebhookEvent
from .services import (
    subscription_cancel,
    subscription_delete,
    subscription_grant,
    subscription_resync,
)

STRIPE_MIRRORED_FIELDS = [
    "user",
    "network",
    "price",
    "stripe_subscription_id",
    "stripe_item_id",
    "status",
    "current_period_end",
    "cancel_at_period_end",
    "past_due_since",
    "stripe_read_at",
    "granted_by_admin",
]


class GrantForm(forms.ModelForm):
    days = forms.IntegerField(min_value=1, max_value=3650, initial=30)

    class Meta:
        model = Subscription
        fields = ["user", "network"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["user", "network", "status", "current_period_end", "granted_by_admin"]
    list_filter = ["status", "granted_by_admin"]
    search_fields = ["user__email", "network__slug", "stripe_subscription_id"]
    actions = ["end_now_prorated", "end_now_no_refund", "cancel_at_period_end", "resync"]

    def get_form(self, request: HttpRequest, obj=None, **kwargs):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = GrantForm  # adding = granting a demo subscription
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:  # type: ignore[no-untyped-def]
        if obj is not None and obj.is_stripe_backed:
            return STRIPE_MIRRORED_FIELDS
        return ["stripe_subscription_id", "stripe_read_at", "past_due_since"]

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:  # type: ignore[no-untyped-def]
        if change:
            if obj.is_stripe_backed:
                return  # nothing editable: use the actions, which ask Stripe
            super().save_model(request, obj, form, change)
            return
        try:
            granted = subscription_grant(
                user=form.cleaned_data["user"],
                network=form.cleaned_data["network"],
                days=form.cleaned_data["days"],
            )
        except ValueError as error:
            self.message_user(request, str(error), level=messages.ERROR)
            return
        obj.pk = granted.pk

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        self._each(request, [obj], lambda s: subscription_delete(subscription=s), "Deleted")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._each(request, queryset, lambda s: subscription_delete(subscription=s), "Deleted")

    def _each(
        self,
        request: HttpRequest,
        subscriptions: Any,
        action: Callable[[Subscription], object],
        verb: str,
    ) -> None:
        done = 0
        for subscription in list(subscriptions):
            try:
                action(subscription)
                done += 1
            except BillingError as error:
                self.message_user(
                    request, f"{subscription}: Stripe said no or is down, nothing changed: {error}",
                    level=messages.ERROR,
                )  # fmt: skip
        if done:
            self.message_user(request, f"{verb} {done} subscription(s).")

    def _cancel(self, request: HttpRequest, queryset: QuerySet[Subscription], **how: Any) -> None:
        verb = "Set to cancel" if how.get("at_period_end") else "Ended"
        self._each(
            request, queryset,
            lambda s: subscription_cancel(subscription=s, reason="staff", **how), verb,
        )  # fmt: skip

    @admin.action(description="End now with a prorated refund (Stripe; closes connections)")
    def end_now_prorated(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._cancel(request, queryset, refund="prorated")

    @admin.action(description="End now without refund (Stripe; closes connections)")
    def end_now_no_refund(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._cancel(request, queryset, refund="none")

    @admin.action(description="Cancel at the end of the paid period (Stripe)")
    def cancel_at_period_end(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._cancel(request, queryset, at_period_end=True)

    @admin.action(description="Re-read from Stripe")
    def resync(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._each(request, queryset, lambda s: subscription_resync(subscription=s), "Re-read")


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["network", "interval", "amount", "currency", "active", "stripe_price_id"]
    list_filter = ["interval", "active"]


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["stripe_invoice_id", "network", "user", "amount_paid", "fee",
                    "amount_refunded", "currency", "paid_at"]  # fmt: skip
    list_filter = ["currency"]
    search_fields = ["stripe_invoice_id", "user__email", "network__slug"]

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # a mirror of Stripe's invoices


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["user", "stripe_customer_id", "created_at"]
    search_fields = ["user__email", "stripe_customer_id"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = [
        "stripe_event_id", "type", "created", "received_at", "attempted_at", "processed_at",
        "failed_at", "error",
    ]  # fmt: skip
    list_filter = ["type"]
    search_fields = ["stripe_event_id"]
