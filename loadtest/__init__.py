"""``changecast loadtest``: a load generator that drives a running ChangeCast server with real
HTTP writers and WebSocket watchers. It is a client, not part of the server: it needs the
``loadtest`` extra (``httpx``), and the server never imports it.

- ``scenarios``: the named scenarios (no dependency beyond the standard library);
- ``runner``: the run itself, the report and its summary.
"""
