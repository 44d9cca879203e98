"""Serving: the Ray Serve app that hosts every adapter on one base model.

``service`` holds the logic, ``http`` the thin FastAPI routes, ``journal`` the durable
interaction log, ``adapters`` the registry-to-engine residency, ``deployment`` the Ray
Serve wrapper, and ``launch`` starts it locally.
"""
