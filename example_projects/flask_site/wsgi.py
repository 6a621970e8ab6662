"""WSGI entry point: ``gunicorn wsgi:app`` from this folder."""

from flask_site import create_app

app = create_app()
