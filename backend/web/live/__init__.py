"""The live sockets: ``/ws`` (``json_socket``, the JSON contract) and ``/ws/live/{view}``
(``page_socket``, HTML for htmx), on one session base (``session``), with a render cache."""
