"""The HTML pages: routes and their htmx actions (``routes``), what each page loads and how a
change becomes fragments (``views``), pure rendering (``fragments``), Jinja2 (``templates``)."""
