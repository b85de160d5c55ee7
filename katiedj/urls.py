from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from katiedj.api_urls import urlpatterns as api_urlpatterns
from streaming import views as streaming_views


def health(request: HttpRequest) -> JsonResponse:
    """Liveness probe for load balancers and the test harness."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("healthz", health, name="health"),
    path("metrics", streaming_views.metrics, name="metrics"),
    path("api/v1/", include((api_urlpatterns, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("billing.urls")),
    path("", include("frontend.urls")),
]
