"""WSGI entry point of the hello-world Django site (``hello_django:application``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "hello_django_settings"
application = get_wsgi_application()
