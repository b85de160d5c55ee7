"""REST API for organizations, members, invitations and personal tokens (``/api/v1/``)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Invitation, Membership, PersonalToken, Role
from .selectors import (
    invitation_get_for_org,
    membership_get,
    membership_require,
    organization_members,
    organizations_of,
)
from .services import (
    InvitationRateLimited,
    invitation_accept,
    invitation_create,
    invitation_revoke,
    invitation_send,
    membership_change_role,
    membership_remove,
    organization_create,
    personal_token_create,
    personal_token_revoke,
)
from .validators import validate_no_control_characters

# --- Organizations ------------------------------------------------------------------------


class OrganizationSerializer(serializers.Serializer):
    """An organization as its member sees it (with their role)."""

    slug = serializers.SlugField(source="organization.slug", read_only=True)
    name = serializers.CharField(
        source="organization.name", max_length=200, validators=[validate_no_control_characters]
    )
    role = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(source="organization.created_at", read_only=True)


def _organization_data(membership: Membership) -> dict[str, Any]:
    return OrganizationSerializer(membership).data


class OrganizationListView(generics.ListAPIView):
    """Organizations you belong to; create one (you become its owner)."""

    serializer_class = OrganizationSerializer

    def get_queryset(self) -> QuerySet[Membership]:
        return organizations_of(user=self.request.user)

    @extend_schema(responses={201: OrganizationSerializer})
    def post(self, request: Request) -> Response:
        serializer = OrganizationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = organization_create(
            name=serializer.validated_data["organization"]["name"], owner=request.user
        )
        membership = membership_get(user=request.user, organization_slug=organization.slug)
        return Response(_organization_data(membership), status=status.HTTP_201_CREATED)


class OrganizationDetailView(APIView):
    serializer_class = OrganizationSerializer

    def get(self, request: Request, org: str) -> Response:
        return Response(
            _organization_data(membership_get(user=request.user, organization_slug=org))
        )

    def patch(self, request: Request, org: str) -> Response:
        membership = membership_require(
            user=request.user, organization_slug=org, minimum=Role.ADMIN
        )
        serializer = OrganizationSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "name" in serializer.validated_data.get("organization", {}):
            membership.organization.name = serializer.validated_data["organization"]["name"]
            membership.organization.save(update_fields=["name"])
        return Response(_organization_data(membership))


# --- Members ------------------------------------------------------------------------------


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    user_id = serializers.IntegerField(source="user.id", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user_id", "email", "role", "created_at"]
        read_only_fields = ["id", "created_at"]


class MemberListView(generics.ListAPIView):
    """Members of the organization and their roles (any member may read)."""

    serializer_class = MemberSerializer

    def get_queryset(self) -> QuerySet[Membership]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return organization_members(organization=membership.organization)


_LAST_OWNER = OpenApiResponse(
    description="The organization's last owner cannot step down or leave (`conflict`)"
)


class MemberDetailView(APIView):
    """Change a member's role (owners) or remove a member (admins; anyone may leave)."""

    serializer_class = MemberSerializer

    def _target(self, actor: Membership, member_id: int) -> Membership:
        return organization_members(organization=actor.organization).get(pk=member_id)

    @extend_schema(responses={200: MemberSerializer, 409: _LAST_OWNER})
    def patch(self, request: Request, org: str, member_id: int) -> Response:
        actor = membership_get(user=request.user, organization_slug=org)
        serializer = MemberSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        role = serializer.validated_data.get("role")
        target = self._target(actor, member_id)
        if role is not None:
            target = membership_change_role(actor=actor, target=target, role=Role(role))
        return Response(MemberSerializer(target).data)

    @extend_schema(responses={204: None, 409: _LAST_OWNER})
    def delete(self, request: Request, org: str, member_id: int) -> Response:
        actor = membership_get(user=request.user, organization_slug=org)
        membership_remove(actor=actor, target=self._target(actor, member_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Invitations --------------------------------------------------------------------------


class InvitationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
        read_only_fields = ["id", "created_at", "expires_at", "accepted_at", "revoked_at"]


class InvitationCreatedSerializer(InvitationSerializer):
    accept_token = serializers.CharField(read_only=True)

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "accept_token"]


class InvitationListView(generics.ListAPIView):
    """Pending and past invitations (admins); invite someone by email."""

    serializer_class = InvitationSerializer

    def get_queryset(self) -> QuerySet[Invitation]:
        actor = membership_require(
            user=self.request.user, organization_slug=self.kwargs["org"], minimum=Role.ADMIN
        )
        return actor.organization.invitations.all()

    @extend_schema(
        responses={
            201: InvitationCreatedSerializer,
            429: OpenApiResponse(
                description="An invitation limit is reached (per person, organization or "
                "address); see Retry-After"
            ),
        }
    )
    def post(self, request: Request, org: str) -> Response:
        actor = membership_get(user=request.user, organization_slug=org)
        serializer = InvitationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            invitation, secret = invitation_create(
                actor=actor,
                email=serializer.validated_data["email"],
                role=Role(serializer.validated_data.get("role", Role.MEMBER)),
            )
        except InvitationRateLimited as limited:
            throttled = exceptions.Throttled(detail=str(limited), code="rate_limited")
            throttled.wait = limited.retry_after  # the Retry-After header, not in the message
            raise throttled from None
        accept_url = request.build_absolute_uri(
            reverse("frontend:invitation-accept", kwargs={"token": secret})
        )
        invitation_send(invitation=invitation, secret=secret, accept_url=accept_url)
        invitation.accept_token = secret  # type: ignore[attr-defined]
        return Response(
            InvitationCreatedSerializer(invitation).data, status=status.HTTP_201_CREATED
        )


class InvitationDetailView(APIView):
    serializer_class = InvitationSerializer

    def delete(self, request: Request, org: str, invitation_id: int) -> Response:
        actor = membership_get(user=request.user, organization_slug=org)
        invitation = invitation_get_for_org(
            organization_id=actor.organization_id, invitation_id=invitation_id
        )
        invitation_revoke(actor=actor, invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AcceptInvitationSerializer(serializers.Serializer):
    token = serializers.CharField()


class InvitationAcceptView(APIView):
    """Accept an invitation sent to your email address."""

    serializer_class = AcceptInvitationSerializer

    @extend_schema(
        responses={
            200: OrganizationSerializer,
            404: OpenApiResponse(
                description="No such invitation for your email address, or it was accepted, "
                "revoked or has expired"
            ),
        }
    )
    def post(self, request: Request) -> Response:
        serializer = AcceptInvitationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = invitation_accept(user=request.user, secret=serializer.validated_data["token"])
        return Response(_organization_data(membership))


# --- Personal tokens ----------------------------------------------------------------------


class PersonalTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = PersonalToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at"]


class PersonalTokenCreatedSerializer(PersonalTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(PersonalTokenSerializer.Meta):
        fields = [*PersonalTokenSerializer.Meta.fields, "token"]


class PersonalTokenListView(generics.ListAPIView):
    """Your personal tokens; create one (the secret is in this response only)."""

    serializer_class = PersonalTokenSerializer

    def get_queryset(self) -> QuerySet[PersonalToken]:
        return PersonalToken.objects.filter(user=self.request.user)

    @extend_schema(responses={201: PersonalTokenCreatedSerializer})
    def post(self, request: Request) -> Response:
        serializer = PersonalTokenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, secret = personal_token_create(user=request.user, **serializer.validated_data)
        token.token = secret  # type: ignore[attr-defined]
        return Response(PersonalTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class PersonalTokenDetailView(APIView):
    serializer_class = PersonalTokenSerializer

    def delete(self, request: Request, token_id: int) -> Response:
        token = PersonalToken.objects.get(user=request.user, pk=token_id)
        personal_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
