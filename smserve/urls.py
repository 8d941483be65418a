"""/ping, /invocations and /execution-parameters; SageMaker's multi-model API under
/models (answering 404 unless SAGEMAKER_MULTI_MODEL); /admin/ only when
SMSERVE_ADMIN_ENABLED."""

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
    path("models", views.ModelsView.as_view(), name="models"),
    path("models/<str:name>", views.ModelView.as_view(), name="model"),
    path(
        "models/<str:name>/invoke",
        views.ModelInvokeView.as_view(),
        name="model-invoke",
    ),
]

if conf.get("ADMIN_ENABLED"):
    urlpatterns.append(path("admin/", admin.site.urls))

handler400 = "modelapp.views.bad_request"
handler403 = "modelapp.views.permission_denied"
handler404 = "modelapp.views.not_found"
handler500 = "modelapp.views.server_error"
