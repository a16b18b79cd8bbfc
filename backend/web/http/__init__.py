"""The HTTP edge: REST handlers (``api``), sessions (``auth``), the guards every request
meets (``security``, ``deadline``), the one table from domain errors to statuses (``errors``),
health, OpenAPI and the metrics endpoints."""
