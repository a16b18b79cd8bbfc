"""HTML pages (the full portal, console and dashboard arrive with the pages issue)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from backend.auth import sign_in
from backend.errors import ApiError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "frontend" / "templates"


def make_templates() -> Jinja2Templates:
    """Jinja2 with autoescaping on for every template."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.autoescape = True
    return templates


async def login_page(request: Request) -> Response:
    return request.state.templates.TemplateResponse(request, "login.html",
                                                    {"error": None, "email": ""})


async def login_form(request: Request) -> Response:
    form = await request.form()
    email = str(form.get("email", ""))
    try:
        user = await sign_in(request, email, str(form.get("password", "")))
    except ApiError as exc:
        return request.state.templates.TemplateResponse(
            request, "login.html", {"error": exc.message, "email": email.strip().lower()},
            status_code=exc.status)
    return RedirectResponse("/admin" if user.is_admin else "/", status_code=303)
