"""Jinja2 for the pages: autoescaped templates, content-hashed static URLs, fragments."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from starlette.templating import Jinja2Templates

from backend.web.pages.fragments import Fragments, configure
from backend.web.state import AppState

ROOT = Path(__file__).resolve().parents[3] / "frontend"
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"


@lru_cache(maxsize=64)
def static_url(path: str) -> str:
    """``/static/<path>?v=<content hash>``: browsers may cache assets for as long as they like."""
    digest = hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:10]
    return f"/static/{path}?v={digest}"


def make_templates() -> Jinja2Templates:
    """Jinja2 with autoescaping on for every template."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.autoescape = True
    templates.env.globals["static"] = static_url
    configure(templates.env)
    return templates


def make_fragments(state: AppState) -> Fragments:
    """Fragments whose user names come from the engine's cache (users are primed)."""
    engine = state.engine

    def name_of(user_id: str) -> str:
        doc = engine.peek("users", user_id)
        return str(doc.get("name") or user_id) if doc else str(user_id)

    return Fragments(state.templates.env, name_of)
