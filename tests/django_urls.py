"""URLs of the Django test project."""

from __future__ import annotations

from django.urls import include, path

from . import django_views as views

urlpatterns = [
    path("ok/", views.ok),
    path("status/<int:code>/", views.status),
    path("redirect/", views.redirect),
    path("not-found/", views.not_found),
    path("forbidden/", views.forbidden),
    path("boom/", views.boom),
    path("queries/<int:count>/", views.queries),
    path("queries-on-both/<int:count>/", views.queries_on_both),
    path("queries-then-boom/<int:count>/", views.queries_then_boom),
    path("sleep/<int:ms>/", views.sleep),
    path("mixed/<int:count>/<int:ms>/", views.mixed),
    path("stream/<int:chunks>/", views.stream),
    path("stream-boom/<int:after>/", views.stream_boom),
    path("async/<int:count>/", views.async_view),
    path("async-boom/", views.async_boom),
    path("async-sleep/<int:ms>/", views.async_sleep),
    path("async-stream/<int:chunks>/", views.async_stream),
    path("items/<int:pk>/", views.ItemView.as_view()),
    path("mw-raise/", views.ok),
    path("mw-early/", views.ok),
    path("stats/", include("mmstats_django.urls")),
]
