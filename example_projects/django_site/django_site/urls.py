"""URL configuration of the django_site example project."""

from django.urls import include, path

urlpatterns = [
    path("", include("shop.urls")),
]
