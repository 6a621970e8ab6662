"""URLs of the example shop, one per kind of request mmstats records."""

from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.index, name="index"),
    path("fast/", views.fast, name="fast"),
    path("many-queries/", views.many_queries, name="many_queries"),
    path("slow/", views.slow, name="slow"),
    path("not-found/", views.not_found, name="not_found"),
    path("boom/", views.boom, name="boom"),
    path("forbidden/", views.forbidden, name="forbidden"),
    path("stream/", views.stream, name="stream"),
    path("async/", views.async_view, name="async_view"),
    path("products/", views.product_list, name="product_list"),
    path("products/<int:pk>/", views.product_detail, name="product_detail"),
]
