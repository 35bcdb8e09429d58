"""The runner: argument lists, logs, progress parsed from tqdm, failures sd-scripts hides."""

import sys
import textwrap

import pytest

from copymachine.diagnosis import check_result
from copymachine.errors import EngineError
from copymachine.runner import RunResult, StreamWatcher, run_command

TRAIN_LIKE = textwrap.dedent(
    r"""
    import sys, time
    print("running training / 学習開始", flush=True)
    for i in range(4):
        sys.stderr.write(f"\rsteps:  {i*25}%|##        | {i}/3 [00:0{i}<00:03,  1.5{i}it/s, avr_loss=0.{i}5]")
        sys.stderr.flush()
    sys.stderr.write("\n")
    print("model saved.")
    sys.exit(int(sys.argv[1]))
    """
)


def _run(tmp_path, code, *args):
    events = []
    result = run_command([sys.executable, "-c", code, *args], cwd=tmp_path, env=None, log_path=tmp_path / "logs" / "x.log", on_progress=events.append)
    return result, events


def test_progress_and_log(tmp_path):
    result, events = _run(tmp_path, TRAIN_LIKE, "0")
    assert result.returncode == 0
    assert [(e.step, e.total) for e in events] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert events[-1].loss == pytest.approx(0.35) and events[-1].rate == "1.53it/s" and events[-1].desc == "steps"
    log = (tmp_path / "logs" / "x.log").read_text(encoding="utf-8")
    assert "学習開始" in log and "model saved." in log and "# exit code 0" in log
    assert log.startswith("$ ")


def test_exit_code_and_tail(tmp_path):
    result, _ = _run(tmp_path, TRAIN_LIKE, "3")
    assert result.returncode == 3
    assert "model saved." in result.watcher.tail_lines()


def test_arguments_are_not_split_by_a_shell(tmp_path):
    weird = "a b; echo pwned $(id) 'q' \"d\" \\ %PATH% 日本"
    code = "import sys; print(repr(sys.argv[1]))"
    _result, _ = _run(tmp_path, code, weird)
    assert repr(weird) in (tmp_path / "logs" / "x.log").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "line, nan, oom",
    [
        ("steps:  10%|#  | 1/10 [00:01<00:09,  1.0it/s, avr_loss=nan]", True, False),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", False, True),
        ("RuntimeError: NaN detected in latents: /x.png", True, False),
        ("steps:  10%|#  | 1/10 [00:01<00:09,  1.0it/s, avr_loss=0.1]", False, False),
    ],
)
def test_watcher_detects_hidden_failures(line, nan, oom):
    w = StreamWatcher()
    w.feed(line)
    assert (w.nan, w.oom) == (nan, oom)


def test_watcher_parses_slow_rates_and_unlabelled_bars():
    w = StreamWatcher()
    w.feed("steps:   0%|          | 0/3072 [00:00<?, ?it/s]")
    assert (w.last_progress.step, w.last_progress.total) == (0, 3072)
    w.feed("steps:  42%|####      | 420/1000 [05:12<07:11,  2.34s/it, avr_loss=0.0873]")
    p = w.last_progress
    assert (p.step, p.rate, p.eta, p.loss) == (420, "2.34s/it", "07:11", 0.0873)
    w.feed(" 50%|#####     | 1/2 [00:01<00:01,  1.20it/s]")
    assert w.last_progress.desc == "" and w.last_progress.step == 1


def test_peak_memory_of_the_command_tree(tmp_path):
    # a child that holds ~200 MB in a grandchild: the peak is the grandchild's
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'b = bytearray(200 * 2**20); b[::4096] = b\"x\" * len(b[::4096])'])"
    result, _ = _run(tmp_path, code)
    assert result.returncode == 0
    if hasattr(__import__("os"), "wait4"):
        assert result.peak_rss > 180 * 2**20
        assert "peak memory" in (tmp_path / "logs" / "x.log").read_text(encoding="utf-8")


# What the sd-scripts Python prints when numpy 2 meets an opencv built for numpy 1 (measured:
# numpy 2.1.3 + opencv-python-headless 4.8.1.78; paths shortened), then accelerate's launcher.
NUMPY2_CV2 = """
A module that was compiled using NumPy 1.x cannot be run in
NumPy 2.1.3 as it may crash. To support both 1.x and 2.x
versions of NumPy, modules must be compiled with NumPy 2.0.
Some module may need to rebuild instead e.g. with 'pybind11>=2.12'.

If you are a user of the module, the easiest solution will be to
downgrade to 'numpy<2' or try to upgrade the affected module.
We expect that some modules will need time to support NumPy 2.

Traceback (most recent call last):  File "/home/u/sd-scripts/train_network.py", line 1, in <module>
    from library import utils
  File "/home/u/sd-scripts/library/utils.py", line 1, in <module>
    import cv2
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/cv2/__init__.py", line 181, in <module>
    bootstrap()
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/cv2/__init__.py", line 153, in bootstrap
    native_module = importlib.import_module("cv2")
  File "/usr/lib/python3.11/importlib/__init__.py", line 126, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
AttributeError: _ARRAY_API not found
Traceback (most recent call last):
  File "/home/u/sd-scripts/train_network.py", line 1, in <module>
    from library import utils
  File "/home/u/sd-scripts/library/utils.py", line 1, in <module>
    import cv2
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/cv2/__init__.py", line 181, in <module>
    bootstrap()
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/cv2/__init__.py", line 153, in bootstrap
    native_module = importlib.import_module("cv2")
                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/importlib/__init__.py", line 126, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ImportError: numpy.core.multiarray failed to import
"""
LAUNCHER = """Traceback (most recent call last):
  File "/home/u/sd-scripts/venv/bin/accelerate", line 8, in <module>
    sys.exit(main())
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/accelerate/commands/accelerate_cli.py", line 50, in main
    args.func(args)
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 1199, in launch_command
    simple_launcher(args)
  File "/home/u/sd-scripts/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 778, in simple_launcher
    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
subprocess.CalledProcessError: Command '['/home/u/sd-scripts/venv/bin/python', '/home/u/sd-scripts/train_network.py', '--config_file', '/runs/a/config/copy-lora.toml']' returned non-zero exit status 1.
"""


def _watch(text: str) -> StreamWatcher:
    w = StreamWatcher()
    for segment in text.splitlines():
        w.feed(segment)
    return w


def test_the_root_cause_is_the_first_exception_raised():
    w = _watch(NUMPY2_CV2 + LAUNCHER)
    assert [tb.exception.split(":")[0] for tb in w.tracebacks] == ["AttributeError", "ImportError", "subprocess.CalledProcessError"]
    root = w.root_cause  # numpy's printed stack (its first frame on the header line) is not raised
    assert root.exception == "ImportError: numpy.core.multiarray failed to import"
    assert root.frame() == ['File "/home/u/sd-scripts/library/utils.py", line 1, in <module>', "import cv2"]
    assert root.failed_module() == "cv2"
    assert _watch(LAUNCHER).root_cause is None


class _Stage:
    title = "copy LoRA"


def test_a_failure_names_its_root_cause_and_shows_it_in_the_excerpt(tmp_path):
    result = RunResult(returncode=1, duration_s=1.0, watcher=_watch(NUMPY2_CV2 + LAUNCHER), log_path=tmp_path / "copy-lora.log")
    with pytest.raises(EngineError) as raised:
        check_result(_Stage(), "train_network.py", result, [])
    assert raised.value.message == (
        "stage 'copy LoRA' (train_network.py) failed with exit code 1: ImportError: numpy.core.multiarray failed to import; "
        "opencv and numpy do not fit: pip install 'numpy<2' in sd-scripts' venv, or an opencv built for numpy 2 (opencv-python>=4.10). "
        f"Log: {tmp_path / 'copy-lora.log'}"
    )
    details = raised.value.details
    assert details[:4] == ['File "/home/u/sd-scripts/library/utils.py", line 1, in <module>', "import cv2", "ImportError: numpy.core.multiarray failed to import", "…"]
    assert details[-1].startswith("subprocess.CalledProcessError")  # then the tail as before


def test_a_failure_without_a_traceback_keeps_the_plain_message(tmp_path):
    result = RunResult(returncode=2, duration_s=1.0, watcher=_watch("usage: train_network.py [-h]\ntrain_network.py: error: unrecognized arguments: --x"), log_path=tmp_path / "x.log")
    with pytest.raises(EngineError) as raised:
        check_result(_Stage(), "train_network.py", result, [])
    assert raised.value.message == f"stage 'copy LoRA' (train_network.py) failed with exit code 2. Log: {tmp_path / 'x.log'}"
    assert raised.value.details[-1] == "train_network.py: error: unrecognized arguments: --x"
