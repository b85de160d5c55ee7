from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from networks.models import Network


def home(request: HttpRequest) -> HttpResponse:
    """A plain landing page listing the networks (free first) and how to use them."""
    live = Network.objects.filter(archived_at__isnull=True).select_related("organization")
    networks = live.order_by("-is_public", "name")[:100]
    return render(request, "frontend/home.html", {"networks": networks})
