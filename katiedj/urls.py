from allauth.decorators import rate_limit
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.forms import AdminLoginForm
from katiedj.api_urls import urlpatterns as api_urlpatterns
from streaming import views as streaming_views

# The admin's login is throttled like the site's: allauth's "login" rate per IP on every
# POST, and its failed-login counters (per address, per IP) through the form.
admin.site.login_form = AdminLoginForm
admin.site.login = rate_limit(action="login")(admin.site.login)


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
    # The split view serves Swagger UI's start-up script as a file: no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("", include("billing.urls")),
    path("", include("frontend.urls")),
]

# Under /api/ Django's own errors (no route, a refused request) answer in the API's JSON shape.
handler400 = "katiedj.api.bad_request"
handler403 = "katiedj.api.permission_denied"
handler404 = "katiedj.api.page_not_found"
handler500 = "katiedj.api.server_error"
