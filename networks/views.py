"""HTTP entry points of the publish service.

``publish_legacy`` keeps the original Katie DJ contract byte for byte; ``PublishMessageView``
is the versioned REST endpoint. Both call ``services.publish_request``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .services import PublishError, publish_request


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


@csrf_exempt
def publish_legacy(request: HttpRequest) -> HttpResponse:
    """``POST /api/publish`` and ``POST /publish``: header ``API-KEY``, body {network, data}."""
    if request.method != "POST":
        response = JsonResponse({"error": "Method not allowed: use POST"}, status=405)
        response["Allow"] = "POST"
        return response
    try:
        message = publish_request(
            raw_key=request.headers.get("API-KEY"),
            read_body=lambda: request.body,
            content_length=_content_length(request),
        )
    except PublishError as error:
        return JsonResponse({"error": error.message}, status=error.status)
    return JsonResponse(message.receipt())


def bearer_or_api_key(request: HttpRequest) -> str | None:
    """The publisher key from ``Authorization: Bearer …`` or the ``API-KEY`` header."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("API-KEY")


class PublishMessageView(APIView):
    """``POST /api/v1/networks/<slug>/messages`` with body ``{"data": {...}}``.

    Authenticated by the publisher key (Bearer or API-KEY), not by a session: the key is
    checked inside the publish service so both paths share one order of checks.
    """

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def post(self, request: Request, slug: str) -> Response:
        django_request = request._request
        try:
            message = publish_request(
                raw_key=bearer_or_api_key(django_request),
                read_body=lambda: django_request.body,
                content_length=_content_length(django_request),
                network_slug=slug,
            )
        except PublishError as error:
            status_code = error.status
            headers = {}
            if error.code in ("api_key_missing", "api_key_invalid"):
                status_code = status.HTTP_401_UNAUTHORIZED
                headers["WWW-Authenticate"] = 'Bearer realm="publish"'
            return Response(
                {"error": error.message, "code": error.code}, status=status_code, headers=headers
            )
        return Response(message.receipt(), status=status.HTTP_201_CREATED)
