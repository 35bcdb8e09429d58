"""`copymachine ui`: a local web page (plain JavaScript, static/) over the CLI's code, served by http.server (a
few JSON routes need no framework): previews by the edit stage's edit_and_check, jobs run by `copymachine queue`
(store.py), results.py and files.py for the rest."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import mimetypes
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import partialmethod
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from copymachine import __version__
from copymachine import effects as effect_registry
from copymachine.errors import CopymachineError, InputError
from copymachine.files import read_toml
from copymachine.jobfile import ENGINE_KEYS as ENGINE_OPTIONS
from copymachine.options import PATHS, job_keys, schema
from copymachine.progress import Reporter
from copymachine.ui import actions
from copymachine.ui import results as results_page
from copymachine.ui.files import MAX_UPLOAD, ModelFolders, RunsFiles, safe_name
from copymachine.ui.store import JobStore, Worker

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# the job keys naming a model to read: a file linked into a models folder is the user's own choice
MODEL_KEYS = ("base", "preview-model", "model-file")
TOKEN_COOKIE = "copymachine_token"
TOKEN_HEADER = "X-Copymachine-Token"
# the content types a page of another origin may POST without asking (a CORS "simple" request)
SIMPLE_CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
MAX_JSON_BODY = 2**20
DUPLICATE_SECONDS = 10  # the same job added again within this is a double click, refused
# job keys a page may not set: the engine is the UI's, fixed when it starts (a page naming `python`
# would choose the program the worker runs)
ENGINE_KEYS = tuple(ENGINE_OPTIONS.values())
STATIC = resources.files("copymachine.ui").joinpath("static")


class Refused(Exception):
    """A request the UI will not serve (403): from another origin, to another host, without the token."""


def effect_catalogue() -> list[dict[str, Any]]:
    """The effects and their parameters, as the registry declares them (the page's sliders)."""
    return [{"name": name, "help": effect.summary, "params": [
        {"key": key, "type": p.type.__name__, "default": p.default, "min": p.min, "max": p.max,
         "choices": list(p.choices) if p.choices else None, "help": p.help} for key, p in effect.params.items()]}
        for name, effect in effect_registry.EFFECTS.items()]


class App:
    """The folders, the store, the worker, the engine options; the previews and the jobs the pages ask for."""

    def __init__(self, runs: Path, models: Path | Sequence[Path] | None, queue_args: list[str],
                 auth: str | None = None, engine_overrides: dict[str, Any] | None = None, loras: Sequence[Path] = ()):
        self.runs = Path(runs).resolve()
        self.model_files = ModelFolders([models] if isinstance(models, (str, Path)) else list(models or []))
        self.model_folders = self.model_files.folders
        self.models = self.model_folders[0] if self.model_folders else None
        self.lora_folders = actions.lora_folders(list(loras), self.model_folders)  # where Copy to folder… may copy
        self.files = RunsFiles(self.runs)
        self.store = JobStore(self.runs / "_ui" / "queue")
        self.recovered = self.store.recover()
        self.worker = Worker(self.store, queue_args)
        self.engine_overrides = engine_overrides or {}
        self.auth = auth
        self.token = secrets.token_urlsafe(24)
        self.hosts: tuple[str, ...] = LOCAL_HOSTS  # set by make_server: the names this UI answers to
        self.port: int | None = None
        self._added: dict[str, tuple[float, str]] = {}  # a job's JSON -> when it was added, its id
        self._add_lock = threading.Lock()

    def check_host(self, host_header: str) -> None:
        """The Host header names this UI (DNS rebinding: a foreign site's name resolving to 127.0.0.1)."""
        if self.hosts == ("*",):
            return
        parsed = urlparse("//" + host_header)  # `127.0.0.1:7860`, `[::1]:7860`, `localhost`
        try:
            name, port = parsed.hostname or "", parsed.port
        except ValueError:
            name, port = "", None
        if name not in self.hosts or (port is not None and self.port is not None and port != self.port):
            raise Refused(f"foreign Host {host_header!r}: this UI answers at {', '.join(self.hosts)} only")

    def check_origin(self, value: str, host_header: str) -> None:
        """An Origin or Referer, when sent, is this UI's own (a page of another site may not act here)."""
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or parsed.netloc.lower() != host_header.lower():
            raise Refused(f"request from another origin ({value[:100]}): the UI takes requests from its own page only")

    def check_paths(self, table: dict[str, Any], path_keys: list[str]) -> None:
        """A page's paths lie under --models or --runs (resolved, symlinks followed)."""
        roots = [self.runs, *self.model_folders]
        models = f" or a models folder ({', '.join(map(str, self.model_folders))})" if self.models else ""
        rule = f"paths from the page must lie under the runs folder ({self.runs}){models}"
        for key in path_keys:
            values = table.get(key)
            for value in values if isinstance(values, list) else [values]:
                if value is None or value == "":
                    continue
                if not isinstance(value, str):
                    raise InputError(f"{key}: a path must be a string")
                resolved = Path(value).expanduser().resolve()
                if key in MODEL_KEYS and self.model_files.linked(Path(value).expanduser()):
                    continue
                if not any(resolved.is_relative_to(r) for r in roots):
                    raise InputError(f"{key} {value}: {rule}")

    def preview(self, body: dict[str, Any]) -> dict[str, Any]:
        """One effect's edit of the original with the check's verdict, by the edit stage's code."""
        from copymachine.check import format_report
        from copymachine.stages.edit_image import edit_and_check, verdict_lines

        original = self.files.image(str(body.get("image", "")))
        effect = str(body.get("effect", ""))
        if effect == "custom":
            edited_path = str(body.get("edited", ""))
            custom = self.files.image(edited_path)
            edited, report = edit_and_check(original, "custom", {}, 1.0, custom, bool(body.get("in_place")))
            where: Any = Path(edited_path).name
        else:
            params = effect_registry.resolve_params(effect, body.get("params") or {})
            amount = effect_registry.check_amount(body.get("amount", 1.0))
            edited, report = edit_and_check(original, effect, params, amount)
            where = "edit"
        notes, warnings, refusal = verdict_lines(report, effect, where)
        png = io.BytesIO()
        edited.save(png, "PNG")
        image = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
        return {"effect": effect, "image": image if effect != "custom" else None,
                "verdict": report.verdict, "refusal": refusal, "warnings": warnings, "notes": notes,
                "report": format_report(report, "original", "edited")}

    def add_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """A job from the Make page: written as a jobs file and checked as `queue` checks it."""
        from copymachine import run

        table = {k: v for k, v in body.items()
                 if not (v is None or v is False or (isinstance(v, (str, list, dict)) and not v))}
        engine = sorted(k for k in table if k in ENGINE_KEYS)
        if engine:
            raise InputError(f"{engine[0]}: the engine is the UI's, set when it starts (copymachine ui "
                             "--sd-scripts … --python …); a job from the page may not name it")
        method = table.get("method", "train")
        if method not in run.COMMANDS:
            raise InputError(f"method must be train or diff, not {method!r}")
        # a recipe is a name or a path: as a path, it too must lie under the folders
        paths = [key for key, name in job_keys(method).items() if name in PATHS or key == "recipe"]
        self.check_paths(table, paths)
        # a family's other files (model-file NAME=FILE): files a training loads, so under the folders as well
        files = table.get("model-file")
        named = [str(v).partition("=")[2] for v in (files if isinstance(files, list) else [files]) if v]
        self.check_paths({"model-file": named}, ["model-file"])
        if "base" not in table:
            raise InputError("give the base model (a path to a .safetensors checkpoint)")
        if not table.get("out"):
            name = table.get("name") or (Path(table["image"][0]).stem if table.get("image") else "generated")
            table["out"] = str(self.runs / safe_name(str(name)))
        key = json.dumps(table, sort_keys=True)
        with self._add_lock:
            now = time.monotonic()
            self._added = {k: v for k, v in self._added.items() if now - v[0] < DUPLICATE_SECONDS}
            if key in self._added:
                when, earlier = self._added[key]
                raise InputError(f"the same job was added {now - when:.0f} s ago (job {earlier}); "
                                 "change something to add another")
            # checked as the run checks it before it is queued: a refused job leaves nothing behind
            job_id = self.store.add(table, self.engine_overrides,
                                    lambda job: run.check_inputs(job.options, Reporter(stream=io.StringIO())))
            self._added[key] = (time.monotonic(), job_id)
        self.worker.wake()
        return {"id": job_id, "label": self.store.state(job_id).get("label")}

    def jobs(self) -> list[dict[str, Any]]:
        out = []
        for job_id in self.store.ids():
            with contextlib.suppress(KeyError):  # removed meanwhile
                out.append(self.store.view(job_id))
        return out


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP plumbing: basic authentication, the guard, JSON in and out, the one error shape."""

    server_version = f"copymachine/{__version__}"
    app: App  # set on the class made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        try:
            given = base64.b64decode(header[6:]).decode("utf-8") if header.startswith("Basic ") else ""
        except (binascii.Error, UnicodeDecodeError):
            given = ""
        if not self.app.auth or hmac.compare_digest(given.encode(), self.app.auth.encode()):
            return True
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Basic realm="copymachine"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**getattr(self, "_extra_headers", {}), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, default=str).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, message: str, status: int = 400, exit_code: int | None = None) -> None:
        self._json({"error": message, "exit_code": exit_code}, status)

    def _body(self, limit: int = MAX_UPLOAD) -> bytes:
        """The request's body, refused before it is read when it is over `limit`."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise InputError("bad Content-Length")
        if length > limit:
            raise InputError(f"request larger than {limit // 2**20} MB")
        return self.rfile.read(length) if length else b""

    def _guard(self, method: str, path: str, query: dict[str, str]) -> dict[str, str]:
        """Every request: its Host is this UI's, its Origin/Referer (when sent) this UI's page; an
        API call or a file carries the token (cookie or header); a POST is not a content type a
        foreign page may send without asking. Returns the headers to add (the token's cookie)."""
        host = self.headers.get("Host", "")
        self.app.check_host(host)
        for header in ("Origin", "Referer"):
            value = self.headers.get(header)
            if value is not None:
                self.app.check_origin(value, host)
        if path.startswith("/static/"):
            return {}
        token = self.app.token
        if path in ("/", "/index.html") and hmac.compare_digest(query.get("token", "").encode(), token.encode()):
            return {"Set-Cookie": f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"}
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            cookie = SimpleCookie()
        given = self.headers.get(TOKEN_HEADER) or (cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Refused("no valid token: open the address copymachine ui printed (http://…/?token=…)")
        if method == "POST":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if path == "/api/upload":
                if ctype in SIMPLE_CONTENT_TYPES or not self.headers.get("X-Filename"):
                    raise Refused("an upload is the image's bytes with an X-Filename header, sent by the UI's page")
            elif ctype != "application/json":
                raise Refused(f"the API takes JSON (Content-Type: application/json), not {ctype or 'no content type'}")
        return {}

    def _json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self._body(MAX_JSON_BODY) or b"{}")
        except ValueError:
            raise InputError("the request is not JSON") from None
        if not isinstance(data, dict):
            raise InputError("the request is not a JSON object")
        return data


class Handler(JsonHandler):
    """The routes: the page and its static files, the API of the pages, the files under the runs folder."""

    def _handle(self, method: str) -> None:
        if not self._authorised():
            return
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._extra_headers = self._guard(method, url.path, query)
        except Refused as e:
            self.close_connection = True
            if method == "GET" and url.path in ("/", "/index.html") and str(e).startswith("no valid token"):
                return self._send(403, STATIC.joinpath("no-token.html").read_bytes(), "text/html; charset=utf-8")
            return self._error(str(e), 403)
        try:
            self._route(method, url.path, query)
        except CopymachineError as e:
            # the same one-line message the CLI prints (copymachine: error: …)
            self._error(e.message, 400, e.exit_code)
        except KeyError as e:
            self._error(f"no such job: {e.args[0]}", 404)
        except BrokenPipeError:
            pass

    do_GET = partialmethod(_handle, "GET")
    do_POST = partialmethod(_handle, "POST")

    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        app = self.app
        if method == "GET" and path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        routes: dict[tuple[str, str], Callable[[], Any]] = {
            ("GET", "/"): lambda: self._static("index.html"),
            ("GET", "/index.html"): lambda: self._static("index.html"),
            ("GET", "/api/info"): lambda: self._json({
                "version": __version__, "effects": effect_catalogue(), "options": schema(),
                "models": app.model_files.listed(), "runs": str(app.runs),
                "model_folders": [str(m) for m in app.model_folders], "recovered": app.recovered,
                "lora_folders": [str(m) for m in app.lora_folders]}),
            ("GET", "/api/jobs"): self._jobs,
            ("GET", "/api/results"): lambda: self._json({"results": results_page.results(app.jobs(), app.files)}),
            ("GET", "/file"): lambda: self._file(query.get("path", ""), bool(query.get("download"))),
            ("POST", "/api/upload"): lambda: self._json(app.files.upload(
                Path(unquote(self.headers.get("X-Filename") or "upload.png")).name, self._body())),
            ("POST", "/api/preview"): lambda: self._json(app.preview(self._json_body())),
            ("POST", "/api/jobs"): lambda: self._json(app.add_job(self._json_body())),
        }
        if (method, path) in routes:
            return routes[method, path]()
        if method == "GET" and (m := re.fullmatch(r"/api/jobs/(\d+)/form", path)):
            return self._json(read_toml(app.store.files(m.group(1)).toml, "jobs file")["job"][0])
        if method == "POST" and path in ("/api/results/delete", "/api/results/copy"):
            body = self._json_body()
            lora = actions.result_file(body.get("path"), app.jobs(), app.files)
            if path.endswith("delete"):
                return self._json({"trash": str(actions.trash(lora, app.runs))})
            return self._json({"copy": str(actions.copy_to(lora, body.get("folder"), app.lora_folders))})
        m = re.fullmatch(r"/api/jobs/(\d+)/(cancel|retry|remove)", path)
        if method == "POST" and m:
            job_id, action = m.groups()
            app.store.files(job_id)
            getattr(app.worker, action)(job_id)
            return self._json({"id": job_id, "action": action})
        self._error(f"not found: {path}", 404)

    def _jobs(self) -> None:
        """The queue, with an ETag: the page polls with If-None-Match and gets 304 while nothing changed."""
        body = json.dumps({"jobs": self.app.jobs(), "running": self.app.worker.current}, default=str).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self._send(200, body, "application/json; charset=utf-8", {"ETag": etag})

    def _static(self, name: str) -> None:
        if "/" in name or name.startswith("."):
            return self._error("not found", 404)
        try:
            data = STATIC.joinpath(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return self._error("not found", 404)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, data, ctype)

    def _file(self, raw: str, download: bool) -> None:
        path = Path(raw)
        if not raw or not self.app.files.allowed(path) or not path.is_file():
            return self._error("not found (the UI serves files under its runs folder only)", 404)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        extra = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.name)}"} if download else {}
        self._send(200, path.read_bytes(), ctype, extra)


def check_host(host: str, share_on_network: bool) -> str | None:
    """Refuse another host than this machine's without --share-on-network; the warning when given."""
    if host in LOCAL_HOSTS:
        return None
    if not share_on_network:
        raise InputError(f"--host {host} would make the UI reachable from other machines; "
                         "add --share-on-network to mean it (and --auth user:password)")
    return (f"the UI listens on {host}: anyone who can reach this machine on that port can run trainings "
            "and read the files under its runs folder")


def make_server(app: App, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    # an IPv6 address (--host ::1) needs an IPv6 socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("UiServer", (ThreadingHTTPServer,), {"address_family": family})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    # a wildcard address answers to any name of the machine (--share-on-network, with --auth)
    app.hosts = ("*",) if host in WILDCARD_HOSTS else tuple(dict.fromkeys((host, *LOCAL_HOSTS)))
    app.port = server.server_address[1]
    return server
