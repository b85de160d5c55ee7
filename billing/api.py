"""``POST /api/v1/entitlements/token``: a short-lived token for the paid networks you may hear."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .entitlement import mint_entitlement_token


class EntitlementTokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        help_text="Present it when connecting (?token=, Bearer, or subprotocol)."
    )
    expires_at = serializers.DateTimeField()
    networks = serializers.ListField(
        child=serializers.CharField(), help_text="Paid networks it opens."
    )


class EntitlementTokenView(APIView):
    """Mint an entitlement token (authenticate with a portal session or a personal token)."""

    serializer_class = EntitlementTokenSerializer

    @extend_schema(request=None, responses={200: EntitlementTokenSerializer})
    def post(self, request: Request) -> Response:
        token, expires_at, slugs = mint_entitlement_token(user=request.user)
        return Response({"token": token, "expires_at": expires_at, "networks": slugs})
