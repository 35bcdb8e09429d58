"""The run's options are defined once (copymachine/options.py): one bad value gives one message,
whichever face it came through (the command line, a jobs file, the web UI's Add to queue)."""

from __future__ import annotations

import pytest
import tomli_w
from click.testing import CliRunner

from copymachine import jobfile, options
from copymachine.cli import cli
from copymachine.errors import InputError
from copymachine.ui.server import App

CASES = [
    ("resolution", 32, "32 is not in the range 64<=x<=4096."),
    ("set", "copy.network_dim=abc", None),
    ("set", "nosuch.key=1", None),
    ("set", "outline.width=abc", None),
]


def _expected(key: str, value, message: str | None) -> str:
    """The schema's own message for the value (for --set: the recipe's or the effect's)."""
    if message is not None:
        return message
    with pytest.raises(InputError) as e:
        options.validate({"base": "m.safetensors", "sets": [value]})
    return e.value.message


@pytest.mark.parametrize("key, value, message", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_a_bad_value_gives_one_message_through_every_face(tmp_path, key, value, message):
    expected = _expected(key, value, message)
    runs, models = tmp_path / "runs", tmp_path / "models"
    runs.mkdir()
    models.mkdir()
    base, image = models / "m.safetensors", runs / "a.png"
    job = {"base": str(base), "image": [str(image)], "effect": ["outline"], key: [value] if key == "set" else value}
    # the command line
    args = ["train", "--base", str(base), "--image", str(image), "--effect", "outline", f"--{key}", str(value)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and expected in result.output, result.output
    # a jobs file
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(tomli_w.dumps({"job": [job]}), encoding="utf-8")
    with pytest.raises(InputError) as from_file:
        jobfile.load_jobs(jobs_file)
    assert from_file.value.message.startswith(f"{jobs_file}: job 1: ") and from_file.value.message.endswith(expected)
    # the web UI: refused when the job is added, not when it runs
    app = App(runs, models, [], engine_overrides={})
    with pytest.raises(InputError) as from_ui:
        app.add_job(job)
    assert from_ui.value.message.endswith(expected) and app.store.ids() == []


def test_the_ui_form_limits_are_the_schema():
    props = options.schema()["properties"]
    resolution = next(s for s in props["resolution"]["anyOf"] if s["type"] == "integer")
    assert (resolution["minimum"], resolution["maximum"]) == (64, 4096)
    assert options.job_keys("train")["max-steps"] == "max_steps" and "sign" not in options.job_keys("train")
