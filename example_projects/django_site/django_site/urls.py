"""URL configuration of the django_site example project."""

from django.urls import include, path

urlpatterns = [
    # Every worker's stats for Prometheus, at /stats/metrics.  Protect it as
    # you would any page showing what your app serves.
    path("stats/", include("mmstats_django.urls")),
    path("", include("shop.urls")),
]
