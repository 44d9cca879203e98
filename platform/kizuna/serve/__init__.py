"""Serving: the Ray Serve app that hosts every adapter on one base model.

``service`` holds the logic, ``http`` the thin FastAPI routes, ``streaming`` the
token-by-token chat replies, ``journal`` the durable interaction log, ``adapters`` the
registry-to-engine residency, ``deployment`` the Ray Serve wrapper, ``launch`` starts it
locally and ``client`` calls a running one from the CLI.
"""
