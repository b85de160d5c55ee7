"""Dashboard forms: input validation only; the services do the work."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.conf import settings

from accounts.models import Role
from accounts.validators import validate_no_control_characters
from billing.models import Interval
from networks.models import Backpressure, KeyScope, Network
from networks.selectors import networks_of
from networks.services import NETWORK_EDITABLE_FIELDS
from simulator.models import Town, TownStatus
from simulator.towns import towns_visible_to


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=200, validators=[validate_no_control_characters])


_DEFAULTED_FIELDS = (
    "history_max_messages",
    "history_max_age_seconds",
    "backpressure",
    "backpressure_buffer",
)


def _model_default(name: str) -> object:
    return Network._meta.get_field(name).get_default()


class NetworkForm(forms.ModelForm):
    class Meta:
        model = Network
        fields = ["slug", *NETWORK_EDITABLE_FIELDS]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        labels = {
            "is_public": "Free network (anyone may listen; untick for a paid one)",
            "max_message_bytes": "Largest message (bytes)",
            "history_max_messages": "History: messages kept",
            "history_max_age_seconds": "History: max age (seconds)",
            "backpressure_buffer": "Backpressure buffer (messages)",
        }

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False
        if "backpressure" in self.fields:
            # Short enough for the select box; the help text and the docs say the rest.
            self.fields["backpressure"].choices = [
                (Backpressure.CONFLATE, "Conflate (latest only)"),
                (Backpressure.DROP, "Drop oldest, report the gap"),
                (Backpressure.DISCONNECT, "Disconnect (close 4413)"),
            ]
        if self.instance.pk:
            self.fields["slug"].disabled = True  # generators and listeners use it
        # Tuning fields may be left out (scripts, older forms): they keep the model default.
        for name in _DEFAULTED_FIELDS:
            if name in self.fields:
                self.fields[name].required = False

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in _DEFAULTED_FIELDS:
            if name in cleaned and cleaned[name] in (None, ""):
                current = getattr(self.instance, name, None) if self.instance.pk else None
                cleaned[name] = current if current is not None else _model_default(name)
        return cleaned

    def clean_max_message_bytes(self) -> int | None:
        value = self.cleaned_data["max_message_bytes"]
        if value is not None and value > settings.PUBLISH_MAX_BYTES:
            raise forms.ValidationError(f"At most {settings.PUBLISH_MAX_BYTES} bytes.")
        return value


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    networks = forms.ModelMultipleChoiceField(queryset=Network.objects.none())
    scopes = forms.MultipleChoiceField(
        choices=KeyScope.choices, initial=[KeyScope.PUBLISH], widget=forms.CheckboxSelectMultiple
    )
    expires_at = forms.DateTimeField(
        required=False, help_text="Optional, UTC, e.g. 2027-01-31 18:00"
    )

    def __init__(self, *args: object, organization_id: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Only the organization's own networks can be chosen.
        self.fields["networks"].queryset = networks_of(organization_id=organization_id)
        self.fields["networks"].to_field_name = "slug"


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class PersonalTokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Where it will be used, e.g. “laptop” or “nightly import”."
    )


class PriceForm(forms.Form):
    interval = forms.ChoiceField(choices=Interval.choices)
    amount = forms.DecimalField(min_value=Decimal("0.50"), max_digits=8, decimal_places=2)
    currency = forms.ChoiceField(choices=[("eur", "EUR"), ("usd", "USD"), ("gbp", "GBP")])

    def cents(self) -> int:
        return int(self.cleaned_data["amount"] * 100)


class CatalogueFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    access = forms.ChoiceField(
        required=False,
        choices=[("", "Free and paid"), ("free", "Free"), ("paid", "Paid")],
        label="Access",
    )
    provider = forms.ChoiceField(required=False, label="Provider")

    def __init__(self, *args: object, providers: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["q"].widget.attrs.update(
            type="search", placeholder="Traffic, weather, markets…", autocomplete="off"
        )
        self.fields["provider"].choices = [("", "All providers")] + [
            (org.slug, org.name) for org in providers
        ]


class SimulationForm(forms.Form):
    name = forms.CharField(max_length=100)
    network = forms.ModelChoiceField(queryset=Network.objects.none(), to_field_name="slug")
    topology = forms.ChoiceField(
        choices=[
            ("grid", "Manhattan grid"),
            ("sample_net", "The 13-street demo town"),
            ("sumo", "An uploaded town"),
        ],
        initial="grid",
    )
    rows = forms.IntegerField(min_value=1, max_value=20, initial=4, help_text="Grid only.")
    cols = forms.IntegerField(min_value=1, max_value=20, initial=4, help_text="Grid only.")
    town = forms.ModelChoiceField(
        queryset=Town.objects.none(), required=False, help_text="Uploaded town only (ready ones)."
    )
    publish_interval_seconds = forms.FloatField(
        min_value=0.2, max_value=86_400, initial=1.0, label="Publish every (seconds)"
    )

    def __init__(self, *args: object, organization_id: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Only the organization's own live networks can be chosen.
        self.fields["network"].queryset = networks_of(organization_id=organization_id).filter(
            archived_at__isnull=True
        )
        # Its own ready towns and the built-in ones: never another organization's.
        self.fields["town"].queryset = towns_visible_to(organization_id=organization_id).filter(
            status=TownStatus.READY
        )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("topology") == "sumo" and not data.get("town"):
            self.add_error("town", "Choose a ready town (upload one below).")
        return data

    def topology_options(self) -> dict:
        data = self.cleaned_data
        if data["topology"] == "grid":
            return {"rows": data["rows"], "cols": data["cols"]}
        if data["topology"] == "sumo":
            return {"town": data["town"].pk}
        return {}


class TownUploadForm(forms.Form):
    file = forms.FileField(
        label="SUMO network",
        help_text=f"A .net.xml (or a gzip of one), at most {settings.TOWN_MAX_BYTES // 1024:,} KiB "
        "of XML. It is imported in the background: reload to see it ready.",
    )
    name = forms.CharField(
        max_length=100,
        required=False,
        validators=[validate_no_control_characters],
        help_text="Default: the file's name.",
    )
