"""`copymachine ui`: a local web page over the same code as the CLI, served by the standard
library (http.server) with a page of plain JavaScript (copymachine/ui/static/).

- Make: the live edit previews and their verdicts call the edit stage's own function
  (stages/edit_image.edit_and_check + verdict_lines); Add to queue writes a jobs file, checked by
  the queue's loader and the run's first checks (cli/methods.check_inputs).
- Queue: the worker (ui/store.py) runs each job as `copymachine queue JOB.toml --events FILE`;
  stages and progress come from the Reporter's events.
- Results: the run's manifest (copy-check sheet, strength sweep, edit compare sheet) and
  `inspect`'s report (lorainfo).

Nothing here plans, trains or checks anything itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import mimetypes
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from PIL import Image

from copymachine import __version__
from copymachine import effects as effect_registry
from copymachine.errors import CopymachineError, InputError
from copymachine.images import load_rgb
from copymachine.progress import Reporter
from copymachine.ui.store import JobStore, Worker

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = 64 * 2**20
MODEL_SUFFIXES = (".safetensors", ".ckpt")
PREVIEW_CACHE = 8


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _safe_name(name: str) -> str:
    stem = Path(name).stem
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_") or "image"
    return clean[:60]


def effect_catalogue() -> list[dict[str, Any]]:
    """The effects and their parameters, as the registry declares them (the page's sliders)."""
    out = []
    for name, effect in effect_registry.EFFECTS.items():
        params = []
        for key, p in effect.params.items():
            params.append({"key": key, "type": p.type.__name__, "default": p.default, "min": p.min, "max": p.max, "choices": list(p.choices) if p.choices else None, "help": p.help})
        out.append({"name": name, "help": effect.summary, "params": params})
    return out


class App:
    """What the handler needs: the folders, the store, the worker, the engine options."""

    def __init__(self, runs: Path, models: Path | None, queue_args: list[str], auth: str | None = None, engine_overrides: dict[str, Any] | None = None):
        self.runs = Path(runs).resolve()
        self.models = Path(models).resolve() if models else None
        self.ui_dir = self.runs / "_ui"
        self.uploads = self.ui_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.ui_dir / "queue")
        self.recovered = self.store.recover()
        self.worker = Worker(self.store, queue_args)
        self.engine_overrides = engine_overrides or {}
        self.auth = auth
        self._images: dict[str, Image.Image] = {}
        self._lock = threading.Lock()

    # --- uploads and previews -------------------------------------------------------------

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_UPLOAD:
            raise InputError(f"{name}: larger than {MAX_UPLOAD // 2**20} MB")
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = self.uploads / digest
        folder.mkdir(parents=True, exist_ok=True)
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") else ".png"
        path = folder / f"{_safe_name(name)}{suffix}"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            try:
                with Image.open(tmp) as im:
                    im.verify()
            except Exception:
                tmp.unlink()
                raise InputError(f"{name} is not a readable image file") from None
            tmp.replace(path)
        image = self.image(str(path))
        return {"path": str(path), "name": path.name, "width": image.width, "height": image.height, "url": self.file_url(path)}

    def image(self, path: str) -> Image.Image:
        resolved = Path(path).resolve()
        if not self.allowed(resolved):
            raise InputError(f"not an uploaded image: {path}")
        with self._lock:
            if path not in self._images:
                if len(self._images) >= PREVIEW_CACHE:
                    self._images.pop(next(iter(self._images)))
                self._images[path] = load_rgb(resolved)
            return self._images[path]

    def preview(self, body: dict[str, Any]) -> dict[str, Any]:
        """One effect's edit of the original with the check's verdict, by the edit stage's code."""
        from copymachine.check import format_report
        from copymachine.stages.edit_image import edit_and_check, verdict_lines

        original = self.image(str(body.get("image", "")))
        effect = str(body.get("effect", ""))
        if effect == "custom":
            edited_path = str(body.get("edited", ""))
            custom = self.image(edited_path)
            edited, report = edit_and_check(original, "custom", {}, 1.0, custom, bool(body.get("in_place")))
            where: Any = Path(edited_path).name
        else:
            params = effect_registry.resolve_params(effect, body.get("params") or {})
            amount = effect_registry.check_amount(body.get("amount", 1.0))
            edited, report = edit_and_check(original, effect, params, amount)
            where = "edit"
        notes, warnings, refusal = verdict_lines(report, effect, where)
        return {
            "effect": effect,
            "image": _png_data_url(edited) if effect != "custom" else None,
            "verdict": report.verdict,
            "refusal": refusal,
            "warnings": warnings,
            "notes": notes,
            "report": format_report(report, "original", "edited"),
        }

    # --- jobs -------------------------------------------------------------------------------

    def add_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """A job from the Make page: written as a jobs file and checked as `queue` checks it."""
        from copymachine import jobfile
        from copymachine.cli.methods import check_inputs

        table = {k: v for k, v in body.items() if not (v is None or v is False or (isinstance(v, (str, list, dict)) and not v))}
        if "base" not in table:
            raise InputError("give the base model (a path to a .safetensors checkpoint)")
        if not table.get("out"):
            name = table.get("name") or (Path(table["image"][0]).stem if table.get("image") else "generated")
            table["out"] = str(self.runs / _safe_name(str(name)))
        job_id = self.store.add(table, self.engine_overrides)
        try:
            job = jobfile.load_jobs(self.store.files(job_id).toml, self.engine_overrides)[0]
            check_inputs(job.options, Reporter(stream=io.StringIO()))
        except BaseException:
            self.store.remove(job_id)
            raise
        self.worker.wake()
        return {"id": job_id, "label": self.store.state(job_id).get("label")}

    def jobs(self) -> list[dict[str, Any]]:
        out = []
        for job_id in self.store.ids():
            try:
                out.append(self.store.view(job_id))
            except KeyError:
                continue
        return out

    def results(self) -> list[dict[str, Any]]:
        from copymachine.lorafile import read_safetensors
        from copymachine.lorainfo import format_report, lora_report

        out = []
        for job in self.jobs():
            if job.get("status") != "done":
                continue
            for final in job.get("finals") or []:
                path = Path(final)
                if not path.is_file():
                    continue
                try:
                    report = format_report(lora_report(path))
                    md = read_safetensors(path).metadata
                except CopymachineError as e:
                    report, md = e.message, {}
                sheets = self._sheets(path.parent, path, md.get("copymachine.effect"))
                memo = md.get("copymachine.sign", "").startswith("positive strength = less")
                name = path.stem
                more, less = ("-1", "1") if memo else ("1", "-1")
                out.append(
                    {
                        "job": job["id"],
                        "label": job.get("label"),
                        "name": name,
                        "path": str(path),
                        "download": self.file_url(path, download=True),
                        "effect": md.get("copymachine.effect"),
                        "method": md.get("copymachine.method"),
                        "sign": md.get("copymachine.sign", ""),
                        "usage": {
                            "a1111": f"<lora:{name}:{more}>",
                            "a1111_less": f"<lora:{name}:{less}>",
                            "comfyui": f"LoraLoader with lora_name {path.name}: strength_model and strength_clip {'negative' if memo else 'positive'} for more of the edit, {'positive' if memo else 'negative'} for less",
                        },
                        "sheets": sheets,
                        "inspect": report,
                    }
                )
        return out

    def _sheets(self, run_dir: Path, final: Path, effect: str | None) -> list[dict[str, str]]:
        """The sheets of a final LoRA from the stamps its run's stages wrote (the pipeline's own
        records; the manifest holds the latest command only, and jobs of other effects share the
        run folder): the edit's compare sheet, the copy check, the strength sweep."""
        stamps = []
        for path in sorted(run_dir.rglob(".stages/*.json")):
            try:
                stamps.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        sheets = []
        for stamp in stamps:
            outputs, kind, name = stamp.get("outputs", {}), stamp.get("kind"), stamp.get("name", "")
            if kind == "edit_image" and effect and (name == f"{effect}/edit" or name.endswith(f"/{effect}/edit")) and "compare" in outputs:
                sheets.append((0, "edit", name.rsplit("/edit", 1)[0] + ": edit", outputs["compare"]["path"]))
            elif kind == "copy_check" and "sheet" in outputs:
                sheets.append((1, "copy check", name, outputs["sheet"]["path"]))
            elif kind == "preview" and "sheet" in outputs and Path(stamp.get("inputs", {}).get("lora", {}).get("path", "")) == final:
                sheets.append((2, "strength sweep", f"strength sweep of {final.name}", outputs["sheet"]["path"]))
        return [{"kind": k, "title": t, "url": self.file_url(Path(p))} for _, k, t, p in sorted(sheets) if Path(p).is_file()]

    def models_list(self) -> list[str]:
        if not self.models or not self.models.is_dir():
            return []
        return sorted(str(p) for p in self.models.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())

    # --- files ------------------------------------------------------------------------------

    def allowed(self, path: Path) -> bool:
        """Files the page may read: under the runs folder (uploads, run folders, cache sheets)."""
        try:
            path.resolve().relative_to(self.runs)
            return True
        except ValueError:
            return False

    def file_url(self, path: Path, download: bool = False) -> str:
        return "/file?path=" + quote(str(Path(path).resolve())) + ("&download=1" if download else "")


class Handler(BaseHTTPRequestHandler):
    server_version = f"copymachine/{__version__}"
    app: App  # set on the class made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    # --- plumbing ---------------------------------------------------------------------------

    def _authorised(self) -> bool:
        if not self.app.auth:
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:]).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                given = ""
            if hmac.compare_digest(given.encode(), self.app.auth.encode()):
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
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, default=str).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, message: str, status: int = 400, exit_code: int | None = None) -> None:
        self._json({"error": message, "exit_code": exit_code}, status)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            raise InputError(f"request larger than {MAX_UPLOAD // 2**20} MB")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self._body() or b"{}")
        except ValueError:
            raise InputError("the request is not JSON") from None
        if not isinstance(data, dict):
            raise InputError("the request is not a JSON object")
        return data

    def _handle(self, method: str) -> None:
        if not self._authorised():
            return
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(method, url.path, query)
        except CopymachineError as e:
            # the same one-line message the CLI prints (copymachine: error: …)
            self._error(e.message, 400, e.exit_code)
        except KeyError as e:
            self._error(f"no such job: {e.args[0]}", 404)
        except BrokenPipeError:
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # --- routes -----------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        app = self.app
        if method == "GET" and path in ("/", "/index.html"):
            return self._static("index.html")
        if method == "GET" and path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if method == "GET" and path == "/api/info":
            return self._json({"version": __version__, "effects": effect_catalogue(), "models": app.models_list(), "runs": str(app.runs), "recovered": app.recovered})
        if method == "GET" and path == "/api/jobs":
            return self._json({"jobs": app.jobs(), "running": app.worker.current})
        if method == "GET" and path == "/api/results":
            return self._json({"results": app.results()})
        if method == "GET" and path == "/file":
            return self._file(query.get("path", ""), bool(query.get("download")))
        if method == "POST" and path == "/api/upload":
            name = unquote(self.headers.get("X-Filename") or "upload.png")
            return self._json(app.upload(Path(name).name, self._body()))
        if method == "POST" and path == "/api/preview":
            return self._json(app.preview(self._json_body()))
        if method == "POST" and path == "/api/jobs":
            return self._json(app.add_job(self._json_body()))
        m = re.fullmatch(r"/api/jobs/(\d+)/(cancel|retry|remove)", path)
        if method == "POST" and m:
            job_id, action = m.groups()
            app.store.files(job_id)
            getattr(app.worker, action)(job_id)
            return self._json({"id": job_id, "action": action})
        self._error(f"not found: {path}", 404)

    def _static(self, name: str) -> None:
        if "/" in name or name.startswith("."):
            return self._error("not found", 404)
        try:
            data = resources.files("copymachine.ui").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return self._error("not found", 404)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, data, ctype)

    def _file(self, raw: str, download: bool) -> None:
        path = Path(raw)
        if not raw or not self.app.allowed(path) or not path.is_file():
            return self._error("not found (the UI serves files under its runs folder only)", 404)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        extra = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.name)}"} if download else {}
        self._send(200, path.read_bytes(), ctype, extra)


def check_host(host: str, share_on_network: bool) -> str | None:
    """Refuse another host than this machine's without --share-on-network; the warning when given."""
    if host in LOCAL_HOSTS:
        return None
    if not share_on_network:
        raise InputError(f"--host {host} would make the UI reachable from other machines; add --share-on-network to mean it (and --auth user:password)")
    return f"the UI listens on {host}: anyone who can reach this machine on that port can run trainings and read the files under its runs folder"


def make_server(app: App, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
