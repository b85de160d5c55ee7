"""REST API for an organization's networks and publisher keys (``/api/v1/orgs/<org>/…``).

Every view resolves the caller's membership first: objects of other organizations are
404, exactly like objects that do not exist.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Membership, Role
from accounts.selectors import membership_get, membership_require

from .models import ApiKey, KeyScope, Network
from .selectors import api_key_get_for_org, api_keys_of, network_get_for_org, networks_of
from .services import (
    DEFAULT_ROTATION_GRACE,
    NETWORK_EDITABLE_FIELDS,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    network_archive,
    network_create,
    network_unarchive,
    network_update,
)

# --- Networks -----------------------------------------------------------------------------


class NetworkSerializer(serializers.ModelSerializer):
    archived = serializers.BooleanField(source="is_archived", read_only=True)

    class Meta:
        model = Network
        fields = [
            "slug",
            *NETWORK_EDITABLE_FIELDS,
            "archived",
            "archived_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["archived_at", "created_at", "updated_at"]
        # Uniqueness is checked by the service; the name defaults to the slug.
        extra_kwargs = {"slug": {"validators": []}, "name": {"required": False}}

    def validate_max_message_bytes(self, value: int | None) -> int | None:
        if value is not None and value > settings.PUBLISH_MAX_BYTES:
            raise serializers.ValidationError(
                f"At most the platform limit, {settings.PUBLISH_MAX_BYTES} bytes."
            )
        return value


class NetworkListView(generics.ListAPIView):
    """The organization's networks (any member); create one (admins and owners)."""

    serializer_class = NetworkSerializer

    def get_queryset(self) -> QuerySet[Network]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return networks_of(organization_id=membership.organization_id)

    @extend_schema(responses={201: NetworkSerializer})
    def post(self, request: Request, org: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        serializer = NetworkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        fields = {k: v for k, v in data.items() if k in NETWORK_EDITABLE_FIELDS}
        network = network_create(organization=actor.organization, slug=data["slug"], **fields)
        return Response(NetworkSerializer(network).data, status=status.HTTP_201_CREATED)


class NetworkDetailView(APIView):
    """One network: read (any member), update (admins and owners)."""

    serializer_class = NetworkSerializer

    def get(self, request: Request, org: str, slug: str) -> Response:
        membership = membership_get(user=request.user, organization_slug=org)
        network = network_get_for_org(organization_id=membership.organization_id, slug=slug)
        return Response(NetworkSerializer(network).data)

    def patch(self, request: Request, org: str, slug: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        network = network_get_for_org(organization_id=actor.organization_id, slug=slug)
        serializer = NetworkSerializer(network, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = {
            k: v for k, v in serializer.validated_data.items() if k in NETWORK_EDITABLE_FIELDS
        }
        if "slug" in serializer.validated_data and serializer.validated_data["slug"] != slug:
            raise serializers.ValidationError({"slug": ["A network's slug cannot change."]})
        network = network_update(network=network, **changes)
        return Response(NetworkSerializer(network).data)


class NetworkArchiveView(APIView):
    """Archive (POST) or restore (DELETE): archived networks refuse publishes and listeners."""

    serializer_class = NetworkSerializer

    def _network(self, request: Request, org: str, slug: str) -> Network:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        return network_get_for_org(organization_id=actor.organization_id, slug=slug)

    @extend_schema(request=None)
    def post(self, request: Request, org: str, slug: str) -> Response:
        network = network_archive(network=self._network(request, org, slug))
        return Response(NetworkSerializer(network).data)

    @extend_schema(responses={200: NetworkSerializer})
    def delete(self, request: Request, org: str, slug: str) -> Response:
        network = network_unarchive(network=self._network(request, org, slug))
        return Response(NetworkSerializer(network).data)


# --- Publisher keys -----------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    networks = serializers.SlugRelatedField(slug_field="slug", many=True, read_only=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=KeyScope.choices))
    is_active = serializers.BooleanField(read_only=True)
    replaced_by = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "networks",
            "scopes",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "replaced_by",
            "is_active",
        ]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    networks = serializers.ListField(child=serializers.CharField(), allow_empty=False)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=KeyScope.choices), default=[KeyScope.PUBLISH]
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


def _key_with_secret(api_key: ApiKey, secret: str) -> dict:
    api_key.key = secret  # type: ignore[attr-defined]
    return ApiKeyCreatedSerializer(api_key).data


class ApiKeyListView(generics.ListAPIView):
    """The organization's keys, never their secrets (any member); create one (admins)."""

    serializer_class = ApiKeySerializer

    def get_queryset(self) -> QuerySet[ApiKey]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return api_keys_of(organization_id=membership.organization_id)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request: Request, org: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        networks = _own_networks(actor, data["networks"])
        api_key, secret = api_key_create(
            organization=actor.organization,
            name=data["name"],
            networks=networks,
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
            created_by=request.user,
        )
        return Response(_key_with_secret(api_key, secret), status=status.HTTP_201_CREATED)


def _own_networks(actor: Membership, slugs: list[str]) -> list[Network]:
    networks = list(networks_of(organization_id=actor.organization_id).filter(slug__in=slugs))
    missing = set(slugs) - {n.slug for n in networks}
    if missing:
        # Foreign and non-existent networks read the same.
        raise serializers.ValidationError({"networks": [f"No such network: {sorted(missing)}"]})
    return networks


class ApiKeyDetailView(APIView):
    """One key's metadata (any member); revoke it with DELETE (admins)."""

    serializer_class = ApiKeySerializer

    def get(self, request: Request, org: str, key_id: int) -> Response:
        membership = membership_get(user=request.user, organization_slug=org)
        api_key = api_key_get_for_org(organization_id=membership.organization_id, key_id=key_id)
        return Response(ApiKeySerializer(api_key).data)

    def delete(self, request: Request, org: str, key_id: int) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        api_key = api_key_get_for_org(organization_id=actor.organization_id, key_id=key_id)
        api_key_revoke(api_key=api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=30 * 24 * 3600,
        default=int(DEFAULT_ROTATION_GRACE.total_seconds()),
        help_text="How long the old key keeps working (default one day).",
    )


class ApiKeyRotateView(APIView):
    """A new key with the same scopes; the old one expires after the grace period."""

    serializer_class = RotateSerializer

    @extend_schema(request=RotateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request: Request, org: str, key_id: int) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        api_key = api_key_get_for_org(organization_id=actor.organization_id, key_id=key_id)
        serializer = RotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            new_key, secret = api_key_rotate(
                api_key=api_key,
                grace=timedelta(seconds=serializer.validated_data["grace_seconds"]),
                created_by=request.user,
            )
        except ValueError as error:
            raise serializers.ValidationError({"detail": [str(error)]}) from None
        return Response(_key_with_secret(new_key, secret), status=status.HTTP_201_CREATED)
