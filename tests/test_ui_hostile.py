"""The web UI against requests from a stranger: another site's page open in the same browser
(a cross-origin "simple" POST, DNS rebinding with a foreign Host), a request without the token,
a job naming the engine or a path outside the UI's folders, a decompression bomb, a huge body.
Each against the real server over HTTP on 127.0.0.1 (http.client, so every header is ours)."""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from copymachine.ui.server import App, make_server


@pytest.fixture
def ui(tmp_path, fake_engine):
    models = tmp_path / "models"
    models.mkdir()
    os.link(fake_engine.base, models / "base.safetensors")
    app = App(tmp_path / "runs", models, [], engine_overrides={})
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app, server.server_address[1]
    server.shutdown()
    server.server_close()


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def own(app: App, port: int, **more: str) -> dict:
    """The headers the UI's own page sends (its Host, its token)."""
    return {"Host": f"127.0.0.1:{port}", "X-Copymachine-Token": app.token, **more}


def refused(status: int, data: bytes) -> str:
    assert status == 403, (status, data)
    message = json.loads(data)["error"]
    assert "\n" not in message
    return message


def test_the_reported_attack_queues_and_runs_nothing(ui, tmp_path, fake_engine):
    """A page of another site POSTs text/plain to /api/jobs naming its own script as `python`."""
    app, port = ui
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n", encoding="utf-8")
    job = {"base": str(app.models / "base.safetensors"), "effect": ["outline"], "python": str(script), "sd-scripts": str(tmp_path)}
    body = json.dumps(job).encode()
    # as the browser sends it from http://evil.example: no token (the cookie is SameSite=Strict)
    status, data, _ = call(port, "POST", "/api/jobs", body, {"Host": f"127.0.0.1:{port}", "Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert "another origin" in refused(status, data)
    # even knowing the token: text/plain is not the API's, and the Origin is foreign
    status, data, _ = call(port, "POST", "/api/jobs", body, own(app, port, **{"Content-Type": "text/plain"}))
    assert "application/json" in refused(status, data)
    status, data, _ = call(port, "POST", "/api/jobs", body, own(app, port, **{"Content-Type": "application/json", "Origin": "http://evil.example"}))
    assert "another origin" in refused(status, data)
    # and from the UI's own page, the engine is still not the page's to name
    status, data, _ = call(port, "POST", "/api/jobs", body, own(app, port, **{"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}))
    assert status == 400 and "the engine is the UI's" in json.loads(data)["error"]
    assert app.store.ids() == [] and not marker.exists()


@pytest.mark.parametrize("path", ["/api/info", "/api/jobs", "/api/results", "/"])
def test_a_foreign_host_reads_nothing(ui, path):
    """DNS rebinding: evil.example resolves to 127.0.0.1, so the browser sends Host: evil.example."""
    app, port = ui
    status, data, _ = call(port, "GET", path + f"?token={app.token}", headers={"Host": f"evil.example:{port}", "X-Copymachine-Token": app.token})
    assert "foreign Host" in refused(status, data)
    assert b"effects" not in data and b"runs" not in data.lower().replace(b"runs folder", b"")


def test_a_request_without_the_token_is_refused(ui):
    app, port = ui
    host = {"Host": f"localhost:{port}"}
    for path in ("/api/info", "/api/jobs", f"/file?path={app.runs}/x.png"):
        status, data, _ = call(port, "GET", path, headers=host)
        assert "no valid token" in refused(status, data)
    # the page itself: a 403 that is a page saying what to do, and holds no token
    for path in ("/", "/index.html", "/?token=guess"):
        status, page, headers = call(port, "GET", path, headers=host)
        assert status == 403 and headers["Content-Type"].startswith("text/html") and "Set-Cookie" not in headers
        assert b"no valid token" in page and b"open the new address" in page and app.token.encode() not in page
    status, data, _ = call(port, "GET", "/api/info", headers={**host, "X-Copymachine-Token": "guess"})
    assert "no valid token" in refused(status, data)
    # the static files hold no secret: the page's script loads before the token is checked
    assert call(port, "GET", "/static/app.js", headers=host)[0] == 200


def test_the_token_in_the_address_becomes_a_strict_cookie(ui):
    app, port = ui
    status, page, headers = call(port, "GET", f"/?token={app.token}", headers={"Host": f"127.0.0.1:{port}"})
    assert status == 200 and b"<html" in page.lower()
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"copymachine_token={app.token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, data, _ = call(port, "GET", "/api/info", headers={"Host": f"127.0.0.1:{port}", "Cookie": f"copymachine_token={app.token}"})
    assert status == 200 and "effects" in json.loads(data)
    status, data, _ = call(port, "GET", "/api/info", headers={"Host": f"[::1]:{port}", "Cookie": "copymachine_token=wrong"})
    assert "no valid token" in refused(status, data)
    # another port on the same name is another origin
    status, data, _ = call(port, "GET", "/api/info", headers={"Host": f"127.0.0.1:{port + 1}", "Cookie": f"copymachine_token={app.token}"})
    assert "foreign Host" in refused(status, data)


@pytest.mark.parametrize("key", ["base", "image", "out", "preview-model", "cache-dir", "model-file"])
def test_a_path_outside_the_folders_is_refused(ui, key, tmp_path, fake_engine):
    """model-file: a family's text encoder or VAE (NAME=FILE), which a training loads, is a path like the others."""
    app, port = ui
    outside = tmp_path / "elsewhere" / "x.safetensors"
    value = {"image": [str(outside)], "model-file": [f"vae={outside}"]}.get(key, str(outside))
    job = {"base": str(app.models / "base.safetensors"), "effect": ["outline"], key: value}
    status, data, _ = call(port, "POST", "/api/jobs", json.dumps(job).encode(), own(app, port, **{"Content-Type": "application/json"}))
    message = json.loads(data)["error"]
    assert status == 400 and message.startswith(f"{key} ") and "must lie under the runs folder" in message, message
    assert app.store.ids() == []


def test_a_symlink_out_of_the_runs_folder_is_followed_and_refused(ui, tmp_path, fake_engine):
    app, port = ui
    secret = tmp_path / "secret"
    secret.mkdir()
    link = app.runs / "innocent"
    link.symlink_to(secret, target_is_directory=True)
    job = {"base": str(app.models / "base.safetensors"), "effect": ["outline"], "out": str(link / "run")}
    status, data, _ = call(port, "POST", "/api/jobs", json.dumps(job).encode(), own(app, port, **{"Content-Type": "application/json"}))
    assert status == 400 and "must lie under the runs folder" in json.loads(data)["error"]


def test_a_decompression_bomb_ends_in_one_line(ui, tmp_path):
    app, port = ui
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb, optimize=True)  # 81 megapixels in a few kB
    assert bomb.stat().st_size < 200_000
    status, data, _ = call(port, "POST", "/api/upload", bomb.read_bytes(), own(app, port, **{"X-Filename": "bomb.png", "Content-Type": "image/png"}))
    message = json.loads(data)["error"]
    assert status == 400 and message == "bomb.png: 81 megapixels, above the UI's 64; scale it down first"
    assert not any(Path(app.files.uploads).rglob("*.png"))


def test_an_upload_a_foreign_page_could_send_is_refused(ui, tmp_path):
    app, port = ui
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(picture)
    for headers in ({"Content-Type": "text/plain", "X-Filename": "p.png"}, {"Content-Type": "image/png"}):
        status, data, _ = call(port, "POST", "/api/upload", picture.read_bytes(), own(app, port, **headers))
        assert "X-Filename" in refused(status, data)
    assert not any(Path(app.files.uploads).rglob("*.png"))


def test_a_body_over_the_limit_is_refused_before_it_is_read(ui):
    app, port = ui
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/jobs", skip_host=True)
        for k, v in own(app, port, **{"Content-Type": "application/json", "Content-Length": str(10**10)}).items():
            conn.putheader(k, v)
        conn.endheaders()  # no body follows: an answer now means the server did not wait for 10 GB
        r = conn.getresponse()
        assert r.status == 400 and "request larger than" in json.loads(r.read())["error"]
    finally:
        conn.close()


def test_a_model_linked_into_the_models_folder_is_the_users_and_nothing_more(ui, tmp_path, fake_engine):
    """A model file linked into --models (one models folder shared with A1111, ComfyUI) is accepted as
    the base; a folder linked there, a `..`, or the link used as another key is not."""
    app, port = ui
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    real = outside / "mine.safetensors"
    os.link(fake_engine.base, real)
    (app.models / "mine.safetensors").symlink_to(real)
    (app.models / "shelf").symlink_to(outside, target_is_directory=True)

    def add(**job):
        body = json.dumps({"effect": ["outline"], "prompt": "1girl", **job}).encode()
        status, data, _ = call(port, "POST", "/api/jobs", body, own(app, port, **{"Content-Type": "application/json"}))
        return status, json.loads(data)

    status, data = add(base=str(app.models / "mine.safetensors"))
    assert status == 200, data
    for job in ({"base": str(app.models / "shelf" / "mine.safetensors")},
                {"base": str(app.models / "shelf" / ".." / "elsewhere" / "mine.safetensors")},
                {"base": str(app.models / "base.safetensors"), "out": str(app.models / "mine.safetensors")}):
        status, data = add(**job)
        assert status == 400 and "must lie under the runs folder" in data["error"], (job, data)
    assert app.store.ids() == ["0001"]
    # the list offers the link, with each model's family from its header
    listed = {m["path"]: m["family"] for m in app.model_files.listed()}
    assert listed[str(app.models / "mine.safetensors")] == listed[str(app.models / "base.safetensors")]
    assert listed[str(app.models / "base.safetensors")] == "Stable Diffusion 1.x"
    # and only what Add takes: nothing under the folder linked from outside
    assert not any("shelf" in path for path in listed)


def finished(app: App, final: Path) -> str:
    """A job of the queue that finished and made this LoRA (its events as the queue writes them)."""
    job_id = app.store.add({"base": "/m.safetensors", "prompt": "x", "effect": ["flat"]})
    end = {"event": "job_end", "status": "done", "exit_code": 0, "finals": [str(final)]}
    app.store.files(job_id).events.write_text(json.dumps(end) + "\n", encoding="utf-8")
    app.store.set_state(job_id, status="done")
    return job_id


@pytest.fixture
def result(ui, tmp_path):
    """A result of the UI, a LoRA folder it may copy to, and what must stay as it is."""
    app, port = ui
    final = app.runs / "girl" / "girl-outline.safetensors"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"the user's LoRA")
    loras = tmp_path / "Lora"
    loras.mkdir()
    app.lora_folders = [loras.resolve()]
    job_id = finished(app, final)

    def untouched() -> None:
        assert final.read_bytes() == b"the user's LoRA" and not (app.runs / "_trash").exists()
        assert list(loras.iterdir()) == []

    return app, port, final, loras, job_id, untouched


@pytest.mark.parametrize("action", ["delete", "copy"])
def test_a_foreign_page_or_no_token_neither_deletes_nor_copies_a_result(result, action):
    app, port, final, loras, _, untouched = result
    body = json.dumps({"path": str(final), "folder": str(loras.resolve())}).encode()
    json_type = {"Content-Type": "application/json"}
    for headers in (
        {"Host": f"127.0.0.1:{port}", "Content-Type": "text/plain", "Origin": "http://evil.example"},  # a simple POST
        own(app, port, **json_type, Origin="http://evil.example"),
        own(app, port, **json_type, Referer=f"http://127.0.0.1:{port + 1}/"),  # same site, another port
        {"Host": f"127.0.0.1:{port}", **json_type, "Cookie": "copymachine_token=guess"},
        own(app, port, **{"Content-Type": "text/plain"}),
        own(app, port, **json_type, Host=f"evil.example:{port}"),
    ):
        status, data, _ = call(port, "POST", f"/api/results/{action}", body, headers)
        refused(status, data)
    untouched()


def test_a_result_path_outside_the_results_is_refused(result, tmp_path):
    """Only a final LoRA a finished job made, under the runs folder: not another file, not `..`, not a
    link out of the runs folder, not a file of the runs folder no job made."""
    app, port, final, loras, _, untouched = result
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"secret")
    escape = app.runs / "girl" / "escape.safetensors"
    escape.symlink_to(secret)
    finished(app, escape)  # even a job's final, when it is a link out of the runs folder
    stray = app.runs / "girl" / "stray.safetensors"
    stray.write_bytes(b"no job made it")
    for action in ("delete", "copy"):
        for path in (str(secret), f"{app.runs}/../secret.safetensors", str(escape), str(stray), "", None, ["x"],
                     str(final.parent / ".." / "girl" / final.name)):
            body = json.dumps({"path": path, "folder": str(loras.resolve())}).encode()
            status, data, _ = call(port, "POST", f"/api/results/{action}", body, own(app, port, **{"Content-Type": "application/json"}))
            assert status == 400 and json.loads(data)["error"].startswith("not a result of this UI"), (action, path, data)
    untouched()
    assert secret.read_bytes() == b"secret" and stray.read_bytes() == b"no job made it" and escape.is_symlink()


def test_a_copy_goes_to_a_listed_lora_folder_only(result, tmp_path):
    app, port, final, loras, _, _ = result
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (loras / "sub").mkdir()
    linked = tmp_path / "linked-Lora"
    linked.symlink_to(elsewhere, target_is_directory=True)
    for folder in (str(elsewhere), f"{loras.resolve()}/../elsewhere", str(loras.resolve() / "sub"), str(linked), "/tmp", "", None):
        body = json.dumps({"path": str(final), "folder": folder}).encode()
        status, data, _ = call(port, "POST", "/api/results/copy", body, own(app, port, **{"Content-Type": "application/json"}))
        assert status == 400 and json.loads(data)["error"].startswith("not one of the UI's LoRA folders"), (folder, data)
    assert list(elsewhere.iterdir()) == [] and list(loras.iterdir()) == [loras / "sub"]
    # a listed folder replaced by a link to elsewhere after the UI started is not followed
    (loras / "sub").rmdir()
    moved = tmp_path / "Lora-real"
    loras.rename(moved)
    loras.symlink_to(elsewhere, target_is_directory=True)
    body = json.dumps({"path": str(final), "folder": str(loras)}).encode()
    status, data, _ = call(port, "POST", "/api/results/copy", body, own(app, port, **{"Content-Type": "application/json"}))
    assert status == 400 and list(elsewhere.iterdir()) == [] and final.read_bytes() == b"the user's LoRA"


def test_a_jobs_form_is_read_by_the_page_only(result):
    app, port, _, _, job_id, _ = result
    for headers in ({"Host": f"127.0.0.1:{port}"}, {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example", "Cookie": f"copymachine_token={app.token}"},
                    {"Host": f"evil.example:{port}", "X-Copymachine-Token": app.token}):
        status, data, _ = call(port, "GET", f"/api/jobs/{job_id}/form", headers=headers)
        refused(status, data)
        assert b"m.safetensors" not in data
    status, data, _ = call(port, "GET", f"/api/jobs/{job_id}/form", headers=own(app, port))
    assert status == 200 and json.loads(data)["base"] == "/m.safetensors"
    for bad in ("../0001", "0001%2F..%2F..", "x"):
        assert call(port, "GET", f"/api/jobs/{bad}/form", headers=own(app, port))[0] == 404
