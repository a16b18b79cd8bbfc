"""The web layer: the Starlette app factory (``app``), its typed shared state (``state``),
the uvicorn configuration (``server``), and three parts: ``http`` (REST, sessions, guards,
errors, OpenAPI, metrics), ``pages`` (HTML routes, view models, fragments) and ``live`` (the
JSON socket and the page socket)."""
