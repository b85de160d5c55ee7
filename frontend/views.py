from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from networks.models import Network


def home(request: HttpRequest) -> HttpResponse:
    """A plain landing page listing the public networks and how to use them."""
    networks = Network.objects.filter(is_public=True, archived_at__isnull=True).select_related(
        "organization"
    )[:50]
    return render(request, "frontend/home.html", {"networks": networks})
