"""The admin with many models (multi-model mode): lists stay a few queries with 1,000
models and their loads and unloads; a model's page shows its loads and unloads."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.contrib import admin
from django.test import override_settings
from django.urls import path

from modelapp.models import ModelEvent, TrainedModel

# This module is the URLconf of its tests: the admin is off in the suite's settings.
urlpatterns = [path("admin/", admin.site.urls)]

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.urls(__name__),
]

MODELS = 1000


@pytest.fixture
def many_models():
    models = TrainedModel.objects.bulk_create(
        TrainedModel(
            sha256=f"{i:064x}",
            estimator="sklearn.tree.DecisionTreeClassifier",
            loaded_from=f"/opt/ml/models/m{i}/model/model.joblib",
        )
        for i in range(MODELS)
    )
    ModelEvent.objects.bulk_create(
        ModelEvent(
            model_id=m.sha256,
            kind=kind,
            name=f"m{i}",
            url=f"/opt/ml/models/m{i}/model",
            seconds=0.01,
            memory_bytes=5 << 20,
        )
        for i, m in enumerate(models)
        for kind in ("load", "unload")
    )
    return models


@pytest.fixture
def staff(admin_client):
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }
    with override_settings(STORAGES=storages):
        yield admin_client


@pytest.mark.parametrize(
    "page", ["/admin/modelapp/trainedmodel/", "/admin/modelapp/modelevent/"]
)
def test_lists_stay_a_few_queries_with_1000_models(
    staff, many_models, page, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12):
        response = staff.get(page)
    assert response.status_code == HTTPStatus.OK
    assert f"{MODELS if 'trained' in page else 2 * MODELS} " in response.text


def test_a_models_page_shows_its_loads_and_unloads(staff, many_models):
    model = many_models[7]
    response = staff.get(f"/admin/modelapp/trainedmodel/{model.pk}/change/")
    assert response.status_code == HTTPStatus.OK
    assert "Multi-model loads and unloads" in response.text
    assert "<code>m7</code>" in response.text
    assert "5.0 MB" in response.text
