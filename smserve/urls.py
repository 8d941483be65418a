"""/ping, /invocations and /execution-parameters; /admin/ only when SMSERVE_ADMIN_ENABLED."""

from django.contrib import admin
from django.urls import path

from modelapp import conf, views

urlpatterns = [
    path("ping", views.PingView.as_view(), name="ping"),
    path("invocations", views.InvocationsView.as_view(), name="invocations"),
    path(
        "execution-parameters",
        views.ExecutionParametersView.as_view(),
        name="execution-parameters",
    ),
]

if conf.get("ADMIN_ENABLED"):
    urlpatterns.append(path("admin/", admin.site.urls))

handler400 = "modelapp.views.bad_request"
handler403 = "modelapp.views.permission_denied"
handler404 = "modelapp.views.not_found"
handler500 = "modelapp.views.server_error"
