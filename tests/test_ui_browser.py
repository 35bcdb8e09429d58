"""`copymachine ui` in a real headless browser (Debian's chromium, driven by Selenium), against the
recording fake of sd-scripts: upload a picture, move a slider and see the edit's preview change,
add two jobs, see their progress advance (a loss chart, samples), restart the UI while the queue runs and
see it resume, duplicate a job into the form and add it, open the results (one per LoRA), enlarge a sheet,
copy a LoRA to a LoRA folder and delete one. Screenshots of each page go to $COPYMACHINE_UI_SCREENSHOTS
(docs/img/ to refresh those of docs/ui.md), else to the test's temporary folder.

Skipped, with the reason, only when chromium, its driver or selenium is missing; .ci/run installs
them and sets COPYMACHINE_REQUIRE_BROWSER=1, which turns that skip into a failure."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

STEPS = 6  # per training, 1 s each: long enough to watch a job run under a loaded machine
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in the [test] extra)"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run does it)"
    return None


@pytest.fixture
def browser(tmp_path):
    missing = _browser_missing()
    if missing:
        if os.environ.get("COPYMACHINE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test must run here (COPYMACHINE_REQUIRE_BROWSER=1): {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1366,1500", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class UiServer:
    """`copymachine ui` as a user starts it, in its own process."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]):
        self.cwd, self.args, self.env = cwd, args, env
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.n = 0

    def start(self) -> str:
        self.n += 1
        self.err = self.cwd / f"ui-{self.n}.log"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "copymachine", "ui", "--port", "0", *self.args], cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"copymachine ui: (http://\S+)", self.err.read_text(encoding="utf-8", errors="replace"))
            if m:
                self.url = m.group(1)
                return self.url
            assert self.proc.poll() is None, self.err.read_text()
            time.sleep(0.05)
        raise AssertionError("the UI did not start: " + self.err.read_text())

    def stop(self, sig=signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")


def wait_for(condition, timeout: float = 60, what: str = "condition", interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception:  # a re-rendered element, a page loading
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# every control's accessible name (a <label>, aria-label or a button's text), as a screen reader finds it
UNLABELLED = """return Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter((c) => c.type !== 'hidden' && !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
    && !(c.tagName === 'BUTTON' && c.textContent.trim()))
  .map((c) => c.outerHTML.slice(0, 120));"""
SIDEWAYS = "return document.documentElement.scrollWidth - window.innerWidth"


def at_width(d, width: int, page: str) -> int:
    """How far the page scrolls sideways at this width (0: none)."""
    d.set_window_size(width, 844)
    d.execute_script(f"location.hash = '#{page}'")
    time.sleep(0.3)
    return d.execute_script(SIDEWAYS)


def test_make_queue_restart_and_results_in_a_real_browser(browser, fake_engine, scene, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("COPYMACHINE_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    picture = tmp_path / "girl.png"
    scene.image.resize((192, 192), Image.Resampling.LANCZOS).save(picture)
    models = tmp_path / "models"
    models.mkdir()
    base = models / "sd15-base.safetensors"
    shutil.copyfile(fake_engine.base, base)
    loras = tmp_path / "Lora"
    loras.mkdir()
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="1")
    server = UiServer(tmp_path, ["--runs", str(tmp_path / "runs"), "--models", str(models), "--loras", str(loras), *fake_engine.engine_args], env)
    url = server.start()
    try:
        d = browser
        css = lambda sel: d.find_element(By.CSS_SELECTOR, sel)  # noqa: E731

        def click(sel: str) -> None:
            # in the middle of the window, not under the sticky header where a scroll may leave it
            element = css(sel)
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()

        # without the token: a page that says to open the printed address, not raw JSON
        d.get(url.split("?")[0])
        assert "no valid token" in css("body").text and "copymachine ui: http://" in css("body").text
        d.get(url + "#make")
        wait_for(lambda: css(".effect-card[data-effect=contrast]"), what="the effects")
        # every control has a label; at 360 px the page does not scroll sideways
        assert d.execute_script(UNLABELLED) == []
        for effect in ("contrast", "outline", "posterize"):
            click(f".effect-card[data-effect={effect}] .effect-toggle")
        assert at_width(d, 360, "make") <= 0 and at_width(d, 360, "queue") <= 0
        d.set_window_size(1366, 1500)
        d.execute_script("location.hash = '#make'")
        for effect in ("contrast", "outline", "posterize"):
            click(f".effect-card[data-effect={effect}] .effect-toggle")
        # a file that is not a picture: one clear message
        text = tmp_path / "notes.txt"
        text.write_text("not a picture", encoding="utf-8")
        css("#original-file").send_keys(str(text))
        wait_for(lambda: "notes.txt is not a picture: upload a PNG, JPEG or WebP image" in css("#original-info").text, what="the non-image message")
        # the models folder is offered; the base model typed
        options = {o.get_attribute("value"): o.get_attribute("label") for o in d.find_elements(By.CSS_SELECTOR, "#models option")}
        assert options[str(base)] == "Stable Diffusion 1.x · sd15-base.safetensors"
        assert f"Models from {models}" in css("#model-folders").text
        css("#base").send_keys(str(base))
        css("#original-file").send_keys(str(picture))
        wait_for(lambda: "192×192" in css("#original-info").text, what="the upload")

        # an effect's live preview, and the same preview moved by a slider
        click(".effect-card[data-effect=contrast] .effect-toggle")
        card = css(".effect-card[data-effect=contrast]")
        preview = card.find_element(By.CSS_SELECTOR, "img.preview")
        first = wait_for(lambda: preview.get_attribute("src") if preview.get_attribute("src").startswith("data:image/png") else None, what="the contrast preview")
        assert "check: ok" in card.find_element(By.CSS_SELECTOR, ".verdict").text
        slider = card.find_element(By.CSS_SELECTOR, "input[type=range][data-key=factor]")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
        slider.click()  # the thumb jumps to where it is clicked: the middle of 0-10
        for _ in range(5):
            slider.send_keys(Keys.ARROW_RIGHT)
        moved = float(slider.get_attribute("value"))
        assert moved != 1.5
        assert float(card.find_element(By.CSS_SELECTOR, "input[type=number]").get_attribute("value")) == moved
        wait_for(lambda: preview.get_attribute("src") != first and f'"factor":{moved:g}' in (preview.get_attribute("data-params") or ""), what="the preview to follow the slider")
        verdict = card.find_element(By.CSS_SELECTOR, ".verdict").text
        assert verdict.startswith("check: ") and ("too different" in verdict or "check: ok" in verdict)
        # a parameter out of range is refused with the CLI's one-line message, in the page
        number = card.find_element(By.CSS_SELECTOR, "input[data-key=factor] + input[type=number]")
        number.clear()
        number.send_keys("12", Keys.TAB)
        wait_for(lambda: "copymachine: error: contrast: factor=12: must be 0 to 10" in card.find_element(By.CSS_SELECTOR, ".verdict").text, what="the refusal")
        number.clear()
        number.send_keys("1.8", Keys.TAB)
        wait_for(lambda: "check: " in card.find_element(By.CSS_SELECTOR, ".verdict").text and "error" not in card.find_element(By.CSS_SELECTOR, ".verdict").text, what="the preview at 1.8")
        wait_for(lambda: '"factor":1.8' in (preview.get_attribute("data-params") or ""), what="the preview of 1.8")

        # the lightbox: the preview enlarged from the keyboard (Enter); Esc closes it and gives the focus back
        d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", preview)
        ActionChains(d).send_keys(Keys.ENTER).perform()
        wait_for(lambda: css("#lightbox").get_attribute("open") is not None, what="the lightbox")
        assert css("#lightbox-img").get_attribute("src") == preview.get_attribute("src") and css("#lightbox-img").size["width"] > 400
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait_for(lambda: css("#lightbox").get_attribute("open") is None, what="the lightbox to close")
        assert d.switch_to.active_element == preview
        # "generate" chosen: no preview shows the uploaded picture's edit; the upload chosen again, they are back
        click("input[name=source][value=generate]")
        wait_for(lambda: preview.get_attribute("src") is None and "generated when the job runs" in card.find_element(By.CSS_SELECTOR, ".verdict").text, what="no preview with generate")
        click("input[name=source][value=upload]")
        wait_for(lambda: (preview.get_attribute("src") or "").startswith("data:image/png") and "check: " in card.find_element(By.CSS_SELECTOR, ".verdict").text, what="the preview back")

        # quick test settings (6 steps of 1 s at 64 px; the fake's copy check cannot pass 0.8), a preview model
        css("#preview-model").send_keys(str(base))
        click("#more-options summary")
        css("#max-steps").send_keys(str(STEPS))
        css("#resolution").send_keys("64")
        css("#samples").send_keys("2")
        css("#sets").send_keys("copy_check.min_ssim=0")
        # a job the checks refuse shows the CLI's message and is not queued
        css("#base").clear()
        css("#base").send_keys(str(models / "missing.safetensors"))
        click("#add")
        wait_for(lambda: f"copymachine: error: base model not found: {models / 'missing.safetensors'}" in css("#add-message").text, what="the refused job")
        # and under the field it concerns
        assert css("#error-base").text == f"base model not found: {models / 'missing.safetensors'}" and css("#base").get_attribute("aria-invalid") == "true"
        css("#base").clear()
        css("#base").send_keys(str(base))
        css("#sets").send_keys("\nnosuch.key=1")
        click("#add")
        wait_for(lambda: css("#error-sets").text.startswith("unknown recipe section [nosuch]"), what="the refusal under the overrides")
        assert not d.find_elements(By.CSS_SELECTOR, "#error-base") and css("#base").get_attribute("aria-invalid") is None
        css("#sets").clear()
        css("#sets").send_keys("copy_check.min_ssim=0")
        # the form is kept across a reload (localStorage), the uploaded picture and its previews with it
        time.sleep(0.6)
        d.refresh()
        wait_for(lambda: css("#base").get_attribute("value") == str(base), what="the form after a reload")
        assert [css(f"#{f}").get_attribute("value") for f in ("max-steps", "resolution", "samples", "sets", "preview-model")] == [str(STEPS), "64", "2", "copy_check.min_ssim=0", str(base)]
        assert css(".effect-card[data-effect=contrast] .effect-toggle").is_selected()
        assert css(".effect-card[data-effect=contrast] input[data-key=factor] + input[type=number]").get_attribute("value") == "1.8"
        assert css("#original-info").text.startswith("girl.png")
        wait_for(lambda: '"factor":1.8' in (css(".effect-card[data-effect=contrast] img.preview").get_attribute("data-params") or ""), what="the preview after a reload")
        # the page with three effects open, for docs/ui.md; then back to contrast alone
        for other in ("outline", "posterize"):
            click(f".effect-card[data-effect={other}] .effect-toggle")
            wait_for(lambda other=other: "check: " in css(f".effect-card[data-effect={other}] .verdict").text, what=f"the {other} preview")
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(str(shots / "ui-make.png"))
        assert at_width(d, 390, "make") <= 0
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(str(shots / "ui-make-390.png"))
        d.set_window_size(1366, 1500)
        for other in ("outline", "posterize"):
            click(f".effect-card[data-effect={other}] .effect-toggle")
        click("#add")
        wait_for(lambda: "added job 0001" in css("#add-message").text, what="job 1")
        # a second job: posterize instead of contrast
        click(".effect-card[data-effect=contrast] .effect-toggle")
        click(".effect-card[data-effect=posterize] .effect-toggle")
        # a double click adds one job: the button is disabled while the request is in flight
        add = css("#add")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click(); arguments[0].click()", add)
        wait_for(lambda: "added job 0002" in css("#add-message").text, what="job 2")
        time.sleep(1)
        jobs_dir = tmp_path / "runs" / "_ui" / "queue"
        assert sorted(p.name for p in jobs_dir.glob("*.toml")) == ["0001.toml", "0002.toml"]

        # the queue: progress advances
        d.get(url + "#queue")
        job1 = '.job[data-id="0001"]'
        wait_for(lambda: css(job1).get_attribute("data-status") == "running", what="job 1 to run")
        step = re.compile(rf"step (\d+)/{STEPS}")
        seen = wait_for(lambda: step.search(css(f"{job1} .progress-text").text), what="job 1's progress").group(1)
        wait_for(lambda: (m := step.search(css(f"{job1} .progress-text").text)) and m.group(1) != seen, what="job 1's progress to advance")
        # the loss chart of the training, and its samples as they are made (--samples 2)
        chart = wait_for(lambda: d.execute_script("const s = document.querySelector(arguments[0]); return s && s.getAttribute('aria-label')", f"{job1} svg.loss"), what="job 1's loss chart")
        assert re.fullmatch(r"loss of copy LoRA \(memo step 2\): [\d.e-]+ at step \d+, [\d.e-]+ at step \d+ \(range .*\)", chart), chart
        wait_for(lambda: d.execute_script("return Array.from(document.querySelectorAll(arguments[0])).some((i) => i.complete && i.naturalWidth > 0)", f"{job1} .samples img"), what="job 1's first sample")
        d.save_screenshot(str(shots / "ui-queue.png"))
        assert at_width(d, 390, "queue") <= 0
        d.save_screenshot(str(shots / "ui-queue-390.png"))
        d.set_window_size(1366, 1500)
        d.execute_script("location.hash = '#queue'")

        # the queue holds still: focus, a selection and a log scrolled up survive 5 s of updates
        wait_for(lambda: d.execute_script(f"const p = document.querySelector('{job1} pre.log'); return p && p.scrollHeight > p.clientHeight + 20"), what="job 1's log to overflow")
        cancel2 = css('.job[data-id="0002"] button.cancel')
        d.execute_script("arguments[0].focus()", cancel2)
        d.execute_script(f"""const log = document.querySelector('{job1} pre.log'); log.scrollTop = 10; window.heldLog = log; window.snapped = false;
            log.addEventListener('scroll', () => {{ if (log.scrollHeight > log.clientHeight + 10
                && log.scrollTop + log.clientHeight >= log.scrollHeight - 4) window.snapped = true; }});
            window.heldCard = document.querySelector('{job1}');
            const label = document.querySelector('{job1} .label'); const r = document.createRange();
            r.selectNodeContents(label); const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);""")
        selected = d.execute_script("return window.getSelection().toString()")
        before = css(f"{job1} .progress-text").text
        time.sleep(5)
        assert css(f"{job1} .progress-text").text != before  # it did update meanwhile
        assert d.switch_to.active_element == cancel2
        assert d.execute_script("return window.getSelection().toString()") == selected and selected.startswith("0001 · ")
        # the log is the same element, never snapped to its end; still where it was scrolled to, or at the top of
        # the next stage's log when a stage ended meanwhile (the box then shows another text)
        top, overflow = d.execute_script("const l = window.heldLog; return [l.scrollTop, l.scrollHeight - l.clientHeight]")
        assert d.execute_script("return window.heldLog.isConnected && !window.snapped") and top in (0, 10), (top, overflow)
        assert d.execute_script("return window.heldCard.isConnected")
        # read in one step: the part is replaced whenever its text changes (a found element may go stale)
        overall = d.execute_script("return document.querySelector(arguments[0]).textContent", f"{job1} .overall")
        assert re.search(r"job: \d+/\d+ stages", overall)
        d.execute_script("window.getSelection().removeAllRanges()")

        # restart the UI while job 1 runs: it is interrupted as by Ctrl-C, queued again, and resumed
        wait_for(lambda: "effect LoRA" in css(f"{job1} .stages li.running").text, timeout=60, what="job 1's effect LoRA")
        assert server.stop() == 0
        assert "the running job 0001 is interrupted" in server.log()
        # the open page notices: it says the UI is not answering, and dims the stale queue
        wait_for(lambda: "The UI is not answering" in css("#connection").text, what="the page to notice the stop")
        assert "stale" in css("#jobs").get_attribute("class")
        state = (jobs_dir / "0001.state.json").read_text(encoding="utf-8")
        assert '"status": "queued"' in state
        url = server.start()
        d.get(url + "#queue")
        wait_for(lambda: css(job1).get_attribute("data-status") == "running", what="job 1 to resume")
        assert not css("#connection").is_displayed()
        # a page whose token is no longer the UI's (its cookie gone, as after a restart) says so
        d.delete_all_cookies()
        wait_for(lambda: "this page's token is no longer valid" in css("#connection").text, what="the page to notice the token")
        d.get(url)  # the printed address again (a new load: only a fragment would keep the page)
        d.execute_script("location.hash = '#queue'")
        wait_for(lambda: not css("#connection").is_displayed(), what="the page back")
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, f"{job1} .stages li.skipped")) >= 5, what="job 1's finished stages skipped")
        wait_for(lambda: css(job1).get_attribute("data-status") == "done", timeout=90, what="job 1 to finish")
        wait_for(lambda: css('.job[data-id="0002"]').get_attribute("data-status") == "done", timeout=90, what="job 2 to finish")
        log = (jobs_dir / "0001.log").read_text(encoding="utf-8")
        assert "copymachine: interrupted; sd-scripts was stopped" in log and "up to date, skipped" in log
        # job 2's card keeps its effect LoRA's loss chart and samples; a sample enlarged, a click closes it
        job2 = '.job[data-id="0002"]'
        assert "loss of posterize: effect LoRA" in css(f"{job2} svg.loss").get_attribute("aria-label")
        assert re.match(r"samples \([1-9]\d*\)", css(f"{job2} .samples .hint").text)
        click(f"{job2} .samples a.zoom")
        wait_for(lambda: css("#lightbox").get_attribute("open") is not None and d.execute_script("return document.querySelector('#lightbox-img').naturalWidth") > 0, what="the sample enlarged")
        css("#lightbox-img").click()
        wait_for(lambda: css("#lightbox").get_attribute("open") is None, what="the lightbox closed by a click")

        # Duplicate job 1 into the form: its settings back on the Make page, added as job 3 (the same LoRA)
        click(f"{job1} button.duplicate")
        wait_for(lambda: "job 0001's settings are in the form" in css("#add-message").text and d.execute_script("return location.hash") == "#make", what="job 1 in the form")
        toggled = {c.get_attribute("data-effect"): c.find_element(By.CSS_SELECTOR, ".effect-toggle").is_selected() for c in d.find_elements(By.CSS_SELECTOR, ".effect-card")}
        assert [e for e, on in toggled.items() if on] == ["contrast"]
        assert css(".effect-card[data-effect=contrast] input[data-key=factor] + input[type=number]").get_attribute("value") == "1.8"
        assert [css(f"#{f}").get_attribute("value") for f in ("base", "max-steps", "samples", "sets")] == [str(base), str(STEPS), "2", "copy_check.min_ssim=0"]
        assert css("#original-info").text.startswith("girl.png")
        click("#add")
        wait_for(lambda: "added job 0003" in css("#add-message").text, what="job 3")
        d.execute_script("location.hash = '#queue'")
        wait_for(lambda: css('.job[data-id="0003"]').get_attribute("data-status") == "done", timeout=90, what="job 3 to finish")

        # the results: each LoRA with its sheets, inspect and usage line
        d.get(url + "#results")
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2, what="two results")
        time.sleep(1)  # the page may draw the list twice as it opens
        result = css('.result[data-name="girl-contrast"]')
        # one entry per LoRA, with the jobs that made it; each shows its own strength sweep only
        assert "made by jobs 0001, 0003" in result.find_element(By.CSS_SELECTOR, "h3").text
        for name in ("girl-contrast", "girl-posterize"):
            sweeps = [f.text for f in css(f'.result[data-name="{name}"]').find_elements(By.CSS_SELECTOR, "figcaption") if f.text.startswith("strength sweep")]
            assert sweeps == [f"strength sweep: strength sweep of {name}.safetensors"], sweeps
        kinds = [img.get_attribute("data-kind") for img in result.find_elements(By.CSS_SELECTOR, "img.sheet")]
        assert kinds == ["edit", "copy check", "strength sweep"]
        wait_for(lambda: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in d.find_elements(By.CSS_SELECTOR, "img.sheet")), what="the sheets to load")
        assert "<lora:girl-contrast:1>" in result.text and "positive strength = more of the edit" in result.text
        summary = result.find_element(By.CSS_SELECTOR, "details summary")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
        summary.click()
        assert "rank        8" in result.find_element(By.CSS_SELECTOR, "pre.inspect").text
        href = result.find_element(By.CSS_SELECTOR, "a.download").get_attribute("href")
        assert href.endswith("girl-contrast.safetensors&download=1")
        # a sheet enlarged from the keyboard; Esc closes it
        sweep = result.find_element(By.CSS_SELECTOR, "img.sheet[data-kind='strength sweep']").find_element(By.XPATH, "..")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", sweep)
        ActionChains(d).send_keys(Keys.ENTER).perform()
        wait_for(lambda: css("#lightbox").get_attribute("open") is not None, what="the sweep enlarged")
        assert css("#lightbox-img").get_attribute("src") == sweep.get_attribute("href")
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait_for(lambda: css("#lightbox").get_attribute("open") is None, what="the lightbox to close")
        assert d.switch_to.active_element == sweep
        # Copy to folder…: the LoRA folders the UI was given are listed; the file is copied there
        assert str(loras) in css("#lora-folders").text
        click('.result[data-name="girl-contrast"] button.copy')
        final = tmp_path / "runs" / "girl" / "girl-contrast.safetensors"
        wait_for(lambda: f"copied to {loras / final.name}" in css('.result[data-name="girl-contrast"] .result-message').text, what="the copy")
        assert (loras / final.name).read_bytes() == final.read_bytes()
        assert d.execute_script(UNLABELLED) == []
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(str(shots / "ui-results.png"))
        assert at_width(d, 390, "results") <= 0
        d.set_window_size(1366, 1500)
        # Delete, confirmed: the LoRA is moved to the trash folder under --runs
        click('.result[data-name="girl-posterize"] button.delete')
        alert = d.switch_to.alert
        assert "moved to the trash folder" in alert.text
        alert.accept()
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 1, what="the result deleted")
        runs = tmp_path / "runs"
        assert not (runs / "girl" / "girl-posterize.safetensors").exists()
        assert [p.name for p in (runs / "_trash").rglob("*.safetensors")] == ["girl-posterize.safetensors"]
    except BaseException:
        # what the page and the server showed, for the failure's report
        browser.save_screenshot(str(tmp_path / "failure.png"))
        print("page text at the failure:\n" + browser.find_element(By.TAG_NAME, "body").text)
        print("UI log:\n" + server.log())
        raise
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()
