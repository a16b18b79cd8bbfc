"""HTML pages (the full portal, console and dashboard arrive with the pages issue)."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from backend.errors import ApiError
from backend.passwords import verify_password_async

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
    email = str(form.get("email", "")).strip().lower()
    password = str(form.get("password", ""))
    client = request.client.host if request.client else "unknown"
    keys = (f"email:{email}", f"ip:{client}")
    try:
        request.state.throttle.check(*keys)
    except ApiError as exc:
        return request.state.templates.TemplateResponse(
            request, "login.html", {"error": exc.message, "email": email}, status_code=429)
    doc = await request.state.db.users.find_one({"email": email})
    if doc is None or not await verify_password_async(doc.get("password_hash", ""), password):
        request.state.throttle.fail(*keys)
        return request.state.templates.TemplateResponse(
            request, "login.html", {"error": "Wrong email or password.", "email": email},
            status_code=401)
    request.session.clear()
    request.session.update({"user_id": str(doc["_id"]), "at": int(time.time())})
    return RedirectResponse("/admin" if doc.get("role") == "admin" else "/", status_code=303)
