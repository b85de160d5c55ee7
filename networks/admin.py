from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import ApiKey, Network, UsageHour
from .services import api_key_create, api_key_revoke


@admin.register(Network)
class NetworkAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "organization", "is_public", "archived_at", "created_at"]
    list_filter = ["is_public", "organization", "archived_at"]
    search_fields = ["slug", "name", "organization__name"]


class ApiKeyCreationForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["organization", "name", "networks"]

    def clean(self) -> dict:
        cleaned = super().clean()
        organization = cleaned.get("organization")
        foreign = [
            n.slug
            for n in cleaned.get("networks", [])
            if n.organization_id != getattr(organization, "id", None)
        ]
        if foreign:
            raise forms.ValidationError(
                f"These networks belong to another organization: {', '.join(foreign)}"
            )
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "organization", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["organization", "revoked_at"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at", "replaced_by"]
    filter_horizontal = ["networks"]
    actions = ["revoke_selected"]

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = ApiKeyCreationForm
        return super().get_form(request, obj, **kwargs)

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # New keys go through the service so the secret is generated, hashed and shown once.
        api_key, secret = api_key_create(
            organization=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            networks=list(form.cleaned_data["networks"]),
        )
        obj.pk = api_key.pk
        self.message_user(
            request,
            f"Key created. Copy it now, it will not be shown again: {secret}",
            level=messages.WARNING,
        )

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets, change: bool
    ) -> None:  # type: ignore[no-untyped-def]
        if change:
            super().save_related(request, form, formsets, change)

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


@admin.register(UsageHour)
class UsageHourAdmin(admin.ModelAdmin):
    list_display = ["network", "hour", "messages", "bytes"]
    list_filter = ["organization"]
    date_hierarchy = "hour"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rolled up from the publish counters
