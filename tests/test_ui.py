"""The web UI's server without a browser: where it listens, authentication, which files it serves,
and that its answers are the CLI's (the same messages, jobs files `copymachine queue` reads).
tests/test_ui_browser.py drives the page itself in chromium."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine import jobfile
from copymachine.cli import cli
from copymachine.errors import EXIT_INPUT
from copymachine.events import parse
from copymachine.ui.server import App, check_host, make_server
from copymachine.ui.store import JobStore, Worker, progress_view


@pytest.fixture
def served(tmp_path, fake_engine):
    """A UI server in this process (its worker not started), and a client for it."""
    instances = []

    def start(auth: str | None = None, models: Path | None = None):
        app = App(tmp_path / "runs", models, [], auth=auth, engine_overrides={})
        server = make_server(app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        instances.append(server)
        return app, Client(f"http://127.0.0.1:{server.server_address[1]}", auth, app.token)

    yield start
    for server in instances:
        server.shutdown()
        server.server_close()


class Client:
    def __init__(self, url: str, auth: str | None, token: str | None = None):
        self.url, self.auth, self.token = url, auth, token

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, auth: bool = True, token: bool = True):
        req = urllib.request.Request(self.url + path, data=data, headers=dict(headers or {}))
        if self.token and token:
            req.add_header("X-Copymachine-Token", self.token)
        if self.auth and auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path: str, body: dict | None = None):
        status, data, _ = self.request(path, json.dumps(body).encode() if body is not None else None, {"Content-Type": "application/json"})
        return status, json.loads(data)

    def upload(self, path: Path, name: str | None = None):
        status, data, _ = self.request("/api/upload", path.read_bytes(), {"X-Filename": name or path.name, "Content-Type": "application/octet-stream"})
        return status, json.loads(data)


def test_another_host_needs_share_on_network_and_auth_its_form():
    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == EXIT_INPUT
    assert result.output.strip() == "copymachine: error: --host 0.0.0.0 would make the UI reachable from other machines; add --share-on-network to mean it (and --auth user:password)"
    assert check_host("127.0.0.1", False) is None and check_host("localhost", False) is None
    assert "anyone who can reach this machine" in check_host("0.0.0.0", True)
    result = CliRunner().invoke(cli, ["ui", "--auth", "nopassword"])
    assert result.exit_code == EXIT_INPUT and "--auth expects user:password" in result.output


def test_basic_auth(served):
    _, client = served(auth="me:secret word")
    status, _, headers = client.request("/api/info", auth=False)
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="copymachine"'
    status, data, _ = client.request("/api/info")
    assert status == 200 and json.loads(data)["effects"][0]["name"] == "outline"
    wrong = Client(client.url, "me:wrong")
    assert wrong.request("/api/info")[0] == 401


def test_page_and_files_served_only_under_the_runs_folder(served, tmp_path):
    app, client = served()
    status, page, headers = client.request("/")
    assert status == 200 and b"Add to queue" in page and headers["Content-Type"].startswith("text/html")
    assert client.request("/static/app.js")[0] == 200
    assert client.request("/static/../server.py")[0] == 404
    outside = tmp_path / "secret.txt"
    outside.write_text("no", encoding="utf-8")
    assert client.request(f"/file?path={outside}")[0] == 404
    assert client.request(f"/file?path={app.runs}/../secret.txt")[0] == 404
    inside = app.runs / "run" / "x.txt"
    inside.parent.mkdir(parents=True)
    inside.write_text("yes", encoding="utf-8")
    status, data, headers = client.request(f"/file?path={inside}&download=1")
    assert status == 200 and data == b"yes" and headers["Content-Disposition"] == "attachment; filename*=UTF-8''x.txt"


def test_previews_and_verdicts_are_the_edit_stages(served, scene, tmp_path):
    from copymachine.check import check_pair
    from copymachine.effects import apply_effect, resolve_params

    _, client = served()
    picture = tmp_path / "girl.png"
    scene.image.resize((128, 128)).save(picture)
    status, original = client.upload(picture)
    assert status == 200 and (original["width"], original["height"]) == (128, 128)
    status, data = client.json("/api/preview", {"image": original["path"], "effect": "posterize", "params": {"levels": 3}})
    assert status == 200 and data["verdict"] == "ok" and data["refusal"] is None
    png = Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1])))
    expected = apply_effect("posterize", Image.open(picture).convert("RGB"), resolve_params("posterize", {"levels": 3}))
    assert png.tobytes() == expected.tobytes()  # the same bytes the edit stage writes
    assert "verdict    ok" in data["report"].splitlines()
    # a parameter out of range: the CLI's message
    status, data = client.json("/api/preview", {"image": original["path"], "effect": "posterize", "params": {"levels": 1}})
    assert status == 400 and data["error"] == "posterize: levels=1: must be 2 to 128" and data["exit_code"] == EXIT_INPUT
    # a custom edit of another size: refused as `train --edited` refuses it
    other = tmp_path / "edit.png"
    scene.image.resize((96, 96)).save(other)
    status, edited = client.upload(other)
    status, data = client.json("/api/preview", {"image": original["path"], "effect": "custom", "edited": edited["path"]})
    assert status == 200 and data["verdict"] == "refuse"
    assert data["refusal"].startswith("your edit cannot be used (edit.png): size differs")
    assert check_pair(Image.open(picture), Image.open(other)).verdict == "refuse"
    # not an image; not an uploaded file
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    assert client.upload(junk) == (400, {"error": "junk.png is not a picture (PNG, JPEG, WebP …) or cannot be read", "exit_code": EXIT_INPUT})
    status, data = client.json("/api/preview", {"image": str(picture), "effect": "posterize"})
    assert status == 400 and data["error"].startswith("not an uploaded image")


def test_added_jobs_are_jobs_files_the_queue_reads(served, fake_engine, scene, tmp_path):
    app, client = served(models=fake_engine.base.parent)
    picture = tmp_path / "girl.png"
    scene.image.resize((128, 128)).save(picture)
    _, original = client.upload(picture)
    job = {"method": "diff", "base": str(fake_engine.base), "image": [original["path"]], "effect": ["outline"], "sign": "memo", "max-steps": 3, "set": {"outline": {"width": 2}}}
    status, data = client.json("/api/jobs", job)
    assert status == 200 and data == {"id": "0001", "label": "girl-outline"}
    (loaded,) = jobfile.load_jobs(app.store.files("0001").toml)
    assert loaded.command == "diff" and loaded.options.sign == "memo" and loaded.options.set_tables == {"outline": {"width": 2}}
    assert loaded.options.out == app.runs / "girl" and loaded.options.max_steps == 3
    # refused jobs: the queue's and the run's own messages; nothing is left in the queue
    for bad, message in [
        ({**job, "max-steps": 0}, "max-steps: 0 is not in the range x>=1."),
        ({**job, "base": str(tmp_path / "none.safetensors")}, f"base model not found: {tmp_path / 'none.safetensors'}"),
        ({**job, "image": [str(tmp_path / "gone.png")]}, f"image not found: {tmp_path / 'gone.png'}"),
        ({**job, "effect": ["sepia"]}, "unknown effect 'sepia'; choose from outline, flat, contrast, posterize, jpeg, all, or custom (with --edited)"),
    ]:
        status, data = client.json("/api/jobs", bad)
        assert status == 400 and data["error"] == message, data
    assert app.store.ids() == ["0001"]
    # an original generated from the base model when the job runs: no image, a prompt and a seed
    status, data = client.json("/api/jobs", {"base": str(fake_engine.base), "effect": ["flat"], "prompt": "1cat", "set": {"generate": {"seed": 7}}})
    assert status == 200 and data["id"] == "0002", data
    (generated,) = jobfile.load_jobs(app.store.files("0002").toml)
    assert generated.options.images == () and generated.options.prompt == "1cat" and generated.options.set_tables == {"generate": {"seed": 7}}
    status, data = client.json("/api/jobs")
    assert [j["status"] for j in data["jobs"]] == ["queued", "queued"] and data["jobs"][0]["label"] == "girl-outline"
    # a double click: the same job again within seconds is refused, and nothing is queued
    status, data = client.json("/api/jobs", job)
    assert status == 400 and data["error"].startswith("the same job was added 0 s ago (job 0001)"), data
    assert app.store.ids() == ["0001", "0002"]
    # the queue polled with its ETag: 304 while nothing changed, 200 with a new ETag after a change
    status, _, headers = client.request("/api/jobs")
    etag = headers["ETag"]
    assert status == 200 and client.request("/api/jobs", headers={"If-None-Match": etag})[0] == 304
    app.store.set_state("0002", status="cancelled")
    status, _, headers = client.request("/api/jobs", headers={"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag


def test_a_picture_above_16_megapixels_is_scaled_for_the_previews(served, tmp_path):
    app, client = served()
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 4000), (90, 120, 200)).save(big)
    status, data = client.upload(big)
    assert status == 200 and (data["width"], data["height"]) == (5000, 4000)
    width, height = data["preview"]
    assert width * height <= 16_000_000 and abs(width / height - 1.25) < 0.01
    assert app.files.image(data["path"]).size == (width, height)  # what the previews edit


def test_the_model_folders_next_to_sd_scripts_are_found(tmp_path):
    from copymachine.ui.files import model_folders_near

    kohya = tmp_path / "kohya_ss"
    (kohya / "sd-scripts").mkdir(parents=True)
    (kohya / "models").mkdir()
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints"
    comfy.mkdir(parents=True)
    assert model_folders_near(kohya / "sd-scripts") == [(kohya / "models").resolve(), comfy.resolve()]
    assert model_folders_near(None) == []


def test_the_ui_listens_on_ipv6_loopback(tmp_path):
    app = App(tmp_path / "runs", None, [], engine_overrides={})
    try:
        server = make_server(app, "::1", 0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status, data, _ = Client(f"http://[::1]:{port}", None, app.token).request("/api/info")
        assert status == 200 and json.loads(data)["runs"] == str(app.runs)
    finally:
        server.shutdown()
        server.server_close()


def test_the_queue_on_disk_survives_a_restart(tmp_path):
    store = JobStore(tmp_path / "queue")
    for i in (1, 2, 3):
        (store.folder / f"000{i}.toml").write_text("[[job]]\n", encoding="utf-8")
    store.set_state("0001", status="done")
    store.set_state("0002", status="running")  # the UI was killed while it ran
    store.set_state("0003", status="queued")
    again = JobStore(tmp_path / "queue")
    assert again.recover() == ["0002"] and again.next_queued() == "0002"
    worker = Worker(again, [])
    worker.cancel("0003")
    assert again.state("0003")["status"] == "cancelled"
    worker.retry("0003")
    assert again.state("0003")["status"] == "queued"
    worker.remove("0001")
    assert again.ids() == ["0002", "0003"]
    with pytest.raises(KeyError):
        again.files("0001")


def test_progress_view_from_the_reporters_events():
    events = [
        {"event": "queue_start"},
        {"event": "plan", "stages": ["original image", "copy LoRA", "final"], "names": ["original", "copy-lora", "final"]},
        {"event": "stage_skip", "stage": "original", "index": 1, "total": 3, "title": "original image"},
        {"event": "stage_start", "stage": "copy-lora", "index": 2, "total": 3, "description": "copy LoRA (train_network.py)", "log": "/x/copy-lora.log"},
        {"event": "progress", "step": 2, "total": 3, "text": "step 2/3 · 1.0s/it"},
    ]
    view = progress_view([parse(e) for e in events])
    assert [s["status"] for s in view["stages"]] == ["skipped", "running", "pending"]
    assert view["progress"]["text"] == "step 2/3 · 1.0s/it" and view["log"] == "/x/copy-lora.log"
    ends = [{"event": "stage_done", "stage": "copy-lora", "title": "copy LoRA", "seconds": 3}, {"event": "job_end", "status": "failed", "message": "boom", "finals": []}]
    view = progress_view([parse(e) for e in events + ends])
    assert [s["status"] for s in view["stages"]] == ["skipped", "done", "pending"] and view["message"] == "boom"


def test_the_whole_jobs_progress_and_eta_from_the_plan():
    """Steps left × the measured s/it, each training to come as many steps, each other stage as long
    as the mean of those measured."""
    events = [
        {"event": "plan", "stages": ["original image", "captions", "copy LoRA", "edited image", "effect LoRA"], "names": ["o", "c", "copy", "e", "fx"],
         "kinds": ["generate_image", "captions", "train_lora", "edit_image", "train_lora"]},
        {"event": "stage_start", "stage": "o"}, {"event": "stage_done", "stage": "o", "seconds": 4},
        {"event": "stage_start", "stage": "c"}, {"event": "stage_done", "stage": "c", "seconds": 2},
        {"event": "stage_start", "stage": "copy"},
        {"event": "progress", "step": 30, "total": 100, "rate": "2.00s/it"},
    ]
    overall = progress_view([parse(e) for e in events])["overall"]
    # 70 steps left × 2 s + the edited image (3 s, the mean of 4 and 2) + the effect LoRA (100 × 2 s)
    assert overall == {"finished": 2, "stages": 5, "seconds_left": 70 * 2 + 3 + 200}
    assert progress_view([parse(e) for e in events[:5]])["overall"]["seconds_left"] is None


def test_a_cancelled_jobs_running_stage_is_marked_cancelled(tmp_path):
    store = JobStore(tmp_path / "queue")
    job_id = store.add({"base": "/m.safetensors", "prompt": "x", "effect": ["flat"]})
    events = [{"event": "plan", "stages": ["original image", "copy LoRA"], "names": ["o", "copy"]},
              {"event": "stage_start", "stage": "o"}, {"event": "stage_done", "stage": "o", "seconds": 1},
              {"event": "stage_start", "stage": "copy"}]
    store.files(job_id).events.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    store.set_state(job_id, status="cancelled")
    assert [s["status"] for s in store.view(job_id)["stages"]] == ["done", "cancelled"]



def test_cancel_is_ctrl_c_and_retry_resumes(fake_engine, scene, tmp_path, monkeypatch):
    """The worker runs a job as `copymachine queue`; Cancel interrupts it as Ctrl-C does (exit
    130, finished stages kept), Retry runs it again and it skips what was done."""
    import time

    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "1")
    picture = tmp_path / "girl.png"
    scene.image.resize((128, 128)).save(picture)
    store = JobStore(tmp_path / "runs" / "_ui" / "queue")
    job_id = store.add({"base": str(fake_engine.base), "image": [str(picture)], "effect": ["contrast"], "out": str(tmp_path / "runs" / "girl"), "max-steps": 3, "resolution": 64, "no-copy-check": True})
    worker = Worker(store, fake_engine.engine_args)
    worker.start()
    try:

        def wait(condition, what, timeout=60.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if condition():
                    return
                time.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}: {store.view(job_id)}")

        def copy_lora_stepping():  # not the capabilities' count, which comes before any stage
            view = store.view(job_id)
            running = [st["kind"] for st in view["stages"] if st["status"] == "running"]
            return running == ["train_lora"] and (view.get("progress") or {}).get("step")

        wait(copy_lora_stepping, "the copy LoRA's progress")
        worker.cancel(job_id)
        wait(lambda: store.state(job_id)["status"] == "cancelled", "the cancel")
        assert store.state(job_id)["exit_code"] == 130
        assert "copymachine: interrupted; sd-scripts was stopped" in "\n".join(store.view(job_id)["log_tail"])
        done_before = [s["title"] for s in store.view(job_id)["stages"] if s["status"] == "done"]
        assert done_before == ["original image (memo step 1)", "contrast: edited image (memo step 4)", "captions (memo step 2)"]
        assert [s["title"] for s in store.view(job_id)["stages"] if s["status"] == "cancelled"] == ["copy LoRA (memo step 2)"]
        monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0")
        worker.env = None
        worker.retry(job_id)
        wait(lambda: store.state(job_id)["status"] == "done", "the retry to finish")
        view = store.view(job_id)
        assert [s["status"] for s in view["stages"]][:3] == ["skipped"] * 3
        assert view["finals"] == [str(tmp_path / "runs" / "girl" / "girl-contrast.safetensors")]
    finally:
        worker.stop()


def finished_job(app: App, finals: list[Path], name: str = "x") -> str:
    """A job of the queue that finished and made these LoRAs (its events as the queue writes them)."""
    job_id = app.store.add({"base": "/m.safetensors", "prompt": "x", "effect": ["flat"], "name": name})
    events = [{"event": "queue_start"}, {"event": "job_end", "status": "done", "exit_code": 0, "finals": [str(f) for f in finals]}]
    app.store.files(job_id).events.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    app.store.set_state(job_id, status="done")
    return job_id


def sweep_stamp(run: Path, final: Path) -> Path:
    """The stamp the preview stage writes for a final LoRA's strength sweep, and the sheet it names."""
    sheet = run / "preview" / f"{final.stem}-sweep.png"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(sheet)
    stamp = run / ".stages" / f"preview-{final.stem}.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"kind": "preview", "name": f"preview/{final.stem}", "outputs": {"sheet": {"path": str(sheet)}},
                                 "inputs": {"lora": {"path": str(final)}}}), encoding="utf-8")
    return sheet


def test_the_loss_chart_and_samples_come_from_the_events():
    events = [
        {"event": "plan", "stages": ["copy LoRA", "effect LoRA"], "names": ["copy", "fx"], "kinds": ["train_lora", "train_lora"]},
        {"event": "stage_start", "stage": "copy"},
        *({"event": "progress", "stage": "copy LoRA", "step": s, "total": 3, "loss": 0.5 / s} for s in (1, 2, 2, 3)),
        {"event": "progress", "stage": "copy LoRA", "step": 3, "total": 3, "loss": float("nan")},
        {"event": "sample", "path": "/r/samples/copy/a.png", "title": "copy LoRA"},
        {"event": "stage_done", "stage": "copy", "seconds": 3},
        {"event": "stage_start", "stage": "fx"},
        {"event": "sample", "path": "/r/samples/fx/b.png", "title": "effect LoRA"},
    ]
    view = progress_view([parse(e) for e in events])
    assert view["stages"][0]["loss"] == [(1, 0.5), (2, 0.25), (3, 0.5 / 3)] and view["stages"][1]["loss"] == []
    assert [s["path"] for s in view["samples"]] == ["/r/samples/copy/a.png", "/r/samples/fx/b.png"]
    # a long training's chart is thinned to at most 300 points, its last step kept
    many = [{"event": "progress", "stage": "copy LoRA", "step": s, "total": 3000, "loss": 1 / s} for s in range(1, 3001)]
    loss = progress_view([parse(e) for e in events[:2] + many])["stages"][0]["loss"]
    assert len(loss) <= 301 and loss[0][0] == 1 and loss[-1][0] == 3000


def test_one_result_per_final_lora_with_the_jobs_that_made_it_and_its_own_sweep(served):
    app, client = served()
    run = app.runs / "girl"
    run.mkdir(parents=True)
    contrast, posterize = run / "girl-contrast.safetensors", run / "girl-posterize.safetensors"
    for final in (contrast, posterize):
        final.write_bytes(b"not a lora")  # its inspect report says so; the entry is there
        sweep_stamp(run, final)
    first = finished_job(app, [contrast], "one")
    second = finished_job(app, [posterize], "two")
    again = finished_job(app, [contrast], "three")  # the same run folder and effect: the same LoRA
    status, data = client.json("/api/results")
    by_name = {r["name"]: r for r in data["results"]}
    assert status == 200 and len(data["results"]) == 2
    assert by_name["girl-contrast"]["jobs"] == [first, again] and by_name["girl-posterize"]["jobs"] == [second]
    for name, r in by_name.items():
        assert [s["title"] for s in r["sheets"]] == [f"strength sweep of {name}.safetensors"]


def test_delete_moves_a_result_to_the_trash_and_copy_goes_to_a_lora_folder(served, tmp_path):
    app, client = served()
    final = app.runs / "girl" / "girl-contrast.safetensors"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"lora bytes")
    finished_job(app, [final])
    status, data = client.json("/api/results/copy", {"path": str(final), "folder": str(tmp_path / "Lora")})
    assert status == 400 and data["error"].startswith("not one of the UI's LoRA folders (none; start the UI with --loras DIR)")
    loras = tmp_path / "Lora"
    loras.mkdir()
    app.lora_folders = [loras.resolve()]
    status, data = client.json("/api/info")
    assert data["lora_folders"] == [str(loras.resolve())]
    status, data = client.json("/api/results/copy", {"path": str(final), "folder": str(loras.resolve())})
    assert status == 200 and (loras / final.name).read_bytes() == b"lora bytes" and final.is_file()
    status, data = client.json("/api/results/copy", {"path": str(final), "folder": str(loras.resolve())})
    assert status == 400 and data["error"] == f"{loras.resolve() / final.name} already exists: rename or remove it there first"
    status, data = client.json("/api/results/delete", {"path": str(final)})
    trashed = Path(data["trash"])
    assert status == 200 and not final.exists() and trashed.read_bytes() == b"lora bytes"
    assert trashed.parent.parent == app.runs / "_trash" and trashed.name == final.name
    assert client.json("/api/results")[1]["results"] == []
    assert client.json("/api/results/delete", {"path": str(final)})[0] == 400  # gone: nothing more to delete


def test_the_lora_folders_beside_the_model_folders_are_offered(tmp_path, monkeypatch):
    webui = tmp_path / "stable-diffusion-webui" / "models"
    comfy = tmp_path / "ComfyUI" / "models"
    for folder in (webui / "Stable-diffusion", webui / "Lora", comfy / "checkpoints", comfy / "loras", tmp_path / "mine"):
        folder.mkdir(parents=True)
    app = App(tmp_path / "runs", [webui / "Stable-diffusion", comfy / "checkpoints"], [], engine_overrides={},
              loras=[tmp_path / "mine", tmp_path / "missing"])
    assert app.lora_folders == [(tmp_path / "mine").resolve(), (webui / "Lora").resolve(), (comfy / "loras").resolve()]
    # the CLI adds COPYMACHINE_LORAS
    apps = []

    def no_server(app, *args):
        apps.append(app)
        raise OSError("not started in this test")

    monkeypatch.setattr("copymachine.ui.server.make_server", no_server)
    (tmp_path / "from-env").mkdir()
    monkeypatch.setenv("COPYMACHINE_LORAS", str(tmp_path / "from-env"))
    CliRunner().invoke(cli, ["ui", "--runs", str(tmp_path / "runs"), "--loras", str(tmp_path / "mine")])
    assert apps[0].lora_folders == [(tmp_path / "mine").resolve(), (tmp_path / "from-env").resolve()]


def test_a_job_is_read_back_for_the_make_form(served, fake_engine):
    app, client = served(models=fake_engine.base.parent)
    job = {"base": str(fake_engine.base), "effect": ["flat", "posterize"], "prompt": "1cat", "max-steps": 5, "set": {"generate": {"seed": 7}, "posterize": {"levels": 3}}}
    status, data = client.json("/api/jobs", job)
    assert status == 200
    status, table = client.json(f"/api/jobs/{data['id']}/form")
    assert status == 200 and table == {**job, "out": str(app.runs / "generated")}
    assert client.json("/api/jobs/0099/form")[0] == 404
