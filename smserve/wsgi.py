"""gunicorn's target. With ``preload_app`` the model loads here, in the master, before the
workers fork, so they share one copy of its memory."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

application = get_wsgi_application()

from modelapp.registry import registry  # noqa: E402  (needs the app registry set up)

registry.load()
