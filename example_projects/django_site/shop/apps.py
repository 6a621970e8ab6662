"""App configuration of the example shop."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Register the shop app."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "shop"
