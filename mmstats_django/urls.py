"""URLconf to include: ``path("stats/", include("mmstats_django.urls"))``.

Serves the live page at ``stats/``, the JSON document it polls at
``stats/api/json`` and ``stats/metrics`` for Prometheus.  Protect them as
you would any page that shows the paths your app is serving.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "mmstats"
urlpatterns = [
    path("", views.page, name="page"),
    path("api/json", views.api_json, name="json"),
    path("metrics", views.metrics, name="metrics"),
]
