from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from networks.urls import api_v1_urlpatterns, legacy_urlpatterns


def health(request: HttpRequest) -> JsonResponse:
    """Liveness probe for load balancers and the test harness."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("api/v1/", include((api_v1_urlpatterns, "api-v1"))),
    path("", include((legacy_urlpatterns, "legacy"))),
    path("", include("frontend.urls")),
]
