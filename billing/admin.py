from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Customer, Price, Subscription, WebhookEvent
from .services import subscription_end, subscription_grant


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
    actions = ["end_now"]
    readonly_fields = ["stripe_subscription_id", "stripe_state_at", "past_due_since"]

    def get_form(self, request: HttpRequest, obj=None, **kwargs):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = GrantForm  # adding = granting a demo subscription
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:  # type: ignore[no-untyped-def]
        if change:
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

    @admin.action(description="End selected subscriptions now (closes live connections)")
    def end_now(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for subscription in queryset:
            subscription_end(subscription=subscription)
        self.message_user(request, f"Ended {queryset.count()} subscription(s).")


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["network", "interval", "amount", "currency", "active", "stripe_price_id"]
    list_filter = ["interval", "active"]


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["user", "stripe_customer_id", "created_at"]
    search_fields = ["user__email", "stripe_customer_id"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ["stripe_event_id", "type", "created", "received_at", "processed_at"]
    list_filter = ["type"]
    search_fields = ["stripe_event_id"]
