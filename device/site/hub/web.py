"""The hub's web page: FastAPI (Starlette) + Jinja2, plain HTML and a little JS, no build step.

Login with one administrator password (hashed with scrypt in ``admin_password``; ``edgeface-hub passwd``),
a signed session cookie (SameSite=Strict), and a CSRF token in every form (checked on every POST). Pages:
people (thumbnail, enroll by upload, rename, forget), events (live), unknown faces (grouped; assign a
group to a person, which enrolls it), doors (online, last seen, gallery version, models, threshold).
"""
import asyncio
import hashlib
import hmac
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from .store import HubError

HERE = Path(__file__).parent


def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """``scrypt$<salt hex>$<hash hex>`` (n=2**14, r=8, p=1)."""
    salt = salt or secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${h.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt, _ = stored.strip().split("$")
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored.strip())


def group_unknown(items: list, threshold: float) -> list:
    """Greedy grouping of (event_id, space, embedding, ts, door) by cosine similarity to a group's first face."""
    groups: list[list] = []
    for it in items:
        v = it[2] / (np.linalg.norm(it[2]) or 1.0)
        for g in groups:
            if g[0][1] == it[1] and float(g[0][5] @ v) >= threshold:
                g.append(it + (v,))
                break
        else:
            groups.append([it + (v,)])
    return groups


def create_app(hub, admin_hash: str, secret_key: Optional[str] = None):
    """The FastAPI application for ``hub`` (a :class:`.service.Hub`); ``admin_hash`` from :func:`hash_password`.
    (No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)"""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates
    from starlette.middleware.sessions import SessionMiddleware

    app = FastAPI(title="edgeface hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    thresholds = {s: float(r.min_cosine_similarity) for s, r in hub.recognizers.items()}

    def csrf(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(24)
        return request.session["csrf"]

    def flash(request: Request, text: str, error: bool = False) -> None:
        request.session.setdefault("flash", []).append({"text": text, "error": error})

    def page(request: Request, name: str, **ctx):
        msgs = request.session.pop("flash", [])
        return templates.TemplateResponse(request, name, {"csrf": csrf(request), "messages": msgs,
                                                          "site": hub.site, "user": request.session.get("user"),
                                                          **ctx})

    async def checked_form(request: Request):
        form = await request.form()
        token = form.get("csrf") or ""
        if not request.session.get("csrf") or not hmac.compare_digest(str(token), request.session["csrf"]):
            return None
        return form

    def logged_in(request: Request) -> bool:
        return request.session.get("user") == "admin"

    @app.middleware("http")
    async def require_login(request: Request, call_next):
        path = request.url.path
        if path in ("/login", "/favicon.ico") or path.startswith("/static/"):
            return await call_next(request)
        if not logged_in(request):
            if path.startswith("/api/"):
                return JSONResponse({"error": "login required"}, status_code=401)
            return RedirectResponse("/login", status_code=303)
        return await call_next(request)

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request):
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request):
        form = await checked_form(request)
        if form is None:
            return Response("CSRF check failed: reload the page", status_code=403)
        if not check_password(str(form.get("password", "")), admin_hash):
            await asyncio.sleep(1.0)  # slows password guessing down (scrypt already costs ~50 ms per try)
            flash(request, "wrong password", error=True)
            return RedirectResponse("/login", status_code=303)
        request.session.clear()
        request.session["user"] = "admin"
        return RedirectResponse("/people", status_code=303)

    @app.post("/logout")
    async def logout(request: Request):
        if await checked_form(request) is None:
            return Response("CSRF check failed", status_code=403)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/")
    async def root():
        return RedirectResponse("/people", status_code=303)

    @app.get("/people", response_class=HTMLResponse)
    async def people(request: Request):
        return page(request, "people.html", people=hub.store.people(), version=hub.store.version)

    @app.get("/people/{pid}/thumb.jpg")
    async def thumb(pid: str):
        data = hub.store.thumb(pid)
        return Response(data, media_type="image/jpeg") if data else Response(status_code=404)

    async def action(request: Request, fn, ok: str, where: str = "/people"):
        form = await checked_form(request)
        if form is None:
            return Response("CSRF check failed: reload the page", status_code=403)
        try:
            flash(request, await fn(form))
        except HubError as exc:
            flash(request, str(exc), error=True)
        return RedirectResponse(where, status_code=303)

    @app.post("/people/enroll")
    async def enroll(request: Request):
        async def do(form):
            files = [(f.filename, await f.read()) for f in form.getlist("photos") if hasattr(f, "read")]
            if not files:
                raise HubError("choose one or more photos")
            r = await run_in_threadpool(hub.enroll_images, str(form.get("name", "")), files)
            text = f"enrolled {form.get('name')} from {len(r.accepted)} photo(s)" if r.person_id else \
                f"{form.get('name')} not enrolled"
            if r.rejected:
                text += "; rejected: " + "; ".join(f"{n}: {why}" for n, why in r.rejected)
            if not r.person_id:
                raise HubError(text)
            return text
        return await action(request, do, "")

    @app.post("/people/{pid}/rename")
    async def rename(request: Request, pid: str):
        async def do(form):
            await run_in_threadpool(hub.rename, pid, str(form.get("name", "")))
            return f"renamed to {form.get('name')}"
        return await action(request, do, "")

    @app.post("/people/{pid}/window")
    async def window(request: Request, pid: str):
        async def do(form):
            def utc(key):
                text = str(form.get(key, "")).strip()
                if not text:
                    return None
                try:
                    return datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=timezone.utc).timestamp()
                except ValueError:
                    raise HubError(f"{key}: expected a date and time like 2026-12-24T18:00, got {text!r}") from None
            await run_in_threadpool(hub.set_window, pid, utc("valid_from"), utc("valid_until"))
            return "access window saved (UTC)"
        return await action(request, do, "")

    @app.post("/people/{pid}/forget")
    async def forget(request: Request, pid: str):
        async def do(form):
            name = await run_in_threadpool(hub.forget, pid)
            return f"{name} forgotten: erased here and on every door"
        return await action(request, do, "")

    @app.get("/events", response_class=HTMLResponse)
    async def events(request: Request):
        return page(request, "events.html", events=hub.store.events(100))

    @app.get("/api/events")
    async def api_events(after: float = 0.0, limit: int = 100):
        return {"events": hub.store.events(min(limit, 500), after)}

    @app.get("/events/{event_id}/snapshot.jpg")
    async def snapshot(event_id: str):
        data = hub.store.snapshot(event_id)
        return Response(data, media_type="image/jpeg") if data else Response(status_code=404)

    @app.get("/unknown", response_class=HTMLResponse)
    async def unknown(request: Request):
        items = hub.store.unknown()
        groups = group_unknown(items, min(thresholds.values()) if thresholds else 0.6)
        view = [{"ids": [g[0] for g in grp], "doors": sorted({g[4] for g in grp}), "n": len(grp)} for grp in groups]
        return page(request, "unknown.html", groups=view, people=hub.store.people())

    @app.post("/unknown/assign")
    async def assign(request: Request):
        async def do(form):
            ids = [i for i in str(form.get("events", "")).split(",") if i]
            pid, name = str(form.get("person", "")), str(form.get("name", "")).strip()
            if not ids or not (pid or name):
                raise HubError("choose a person or type a new name")
            await run_in_threadpool(hub.assign_unknown, ids, name, pid or None)
            return f"{len(ids)} face(s) enrolled as {name or 'the chosen person'}"
        return await action(request, do, "", "/unknown")

    @app.get("/doors", response_class=HTMLResponse)
    async def doors(request: Request):
        return page(request, "doors.html", doors=hub.store.doors(), version=hub.store.version)

    @app.get("/api/doors")
    async def api_doors():
        return {"version": hub.store.version, "doors": hub.store.doors()}

    @app.post("/doors/{door}/{what}")
    async def door_command(request: Request, door: str, what: str):
        async def do(form):
            if what not in ("unlock", "reload"):
                raise HubError(f"unknown command {what}")
            hub.command(door, what)
            return f"{what} sent to {door}"
        return await action(request, do, "", "/doors")

    # added last = outermost: the session exists before require_login runs
    app.add_middleware(SessionMiddleware, secret_key=secret_key or secrets.token_hex(32),
                       session_cookie="edgeface_hub", same_site="strict", max_age=8 * 3600)
    return app
