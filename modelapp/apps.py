from django.apps import AppConfig


class ModelappConfig(AppConfig):
    name = "modelapp"
    verbose_name = "Model serving"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from modelapp import checks  # noqa: F401  (registers the system checks)
