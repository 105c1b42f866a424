"""``ENGINE: "pgreservoir.django"``: Django's PostgreSQL backend on a pgreservoir pool.

Django loads :mod:`pgreservoir.django.base` (the backend's ``DatabaseWrapper``);
this package imports nothing of Django by itself, so importing pgreservoir
never imports Django. See docs/django.md.
"""
