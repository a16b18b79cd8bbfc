"""The ChangeCast application, in layers (imports point one way, down this list):

- ``cli``: the composition root (serve, seed, loadtest, bench);
- ``web``: the Starlette app: ``http`` (REST, auth, security, errors, OpenAPI, metrics),
  ``pages`` (routes, view models, fragments) and ``live`` (the JSON and page sockets);
- ``pipeline``: the order workers (dispatch and claims, payments and refunds, notices,
  reconciler);
- ``domain``: orders, stock, users, access rules, analytics, clock and domain errors;
  no web framework;
- ``infra``: settings, logging, the database connection and the embedded server.

``tests/test_layers.py`` checks the import rules.
"""
