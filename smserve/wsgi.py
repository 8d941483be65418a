"""gunicorn's target. With ``preload_app`` the model loads here, in the master, before the
workers fork, so they share one copy of its memory (in multi-model mode each worker loads
the models it serves, ``modelapp/multimodel.py``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

application = get_wsgi_application()

from smserve import fastpaths  # noqa: E402

fastpaths.install()  # only serving processes import this module

from modelapp import multimodel  # noqa: E402  (needs the app registry set up)
from modelapp.registry import registry  # noqa: E402

if multimodel.enabled():  # models come through POST /models, one copy per worker
    multimodel.preload_libraries()
else:
    registry.load()

# The URLconf, the views and DRF are imported here too, not on each worker's first request.
from django.urls import get_resolver  # noqa: E402

get_resolver().resolve("/invocations")
