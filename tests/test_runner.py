"""The runner: argument lists, logs, progress parsed from tqdm, failures sd-scripts hides."""

import sys
import textwrap

import pytest

from copymachine.runner import StreamWatcher, run_command

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
    result, _ = _run(tmp_path, code, weird)
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
