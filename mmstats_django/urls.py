"""URLconf to include: ``path("stats/", include("mmstats_django.urls"))``.

Serves ``metrics`` for Prometheus.  Protect it as you would any page that
shows the paths your app is serving.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "mmstats"
urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
]
