"""neural_stack.files: atomic_open's temporary file and rename, and the stop signals it
holds while it writes, sent for real to a process in the middle of a write."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from neural_stack.files import atomic_open, deferred_signals

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Writes half of `target`, says "writing", waits until the test has sent its signals
# and made `sent`, then writes the rest. `handlers`: "cli" runs it under the command
# line's stop_on_signals; "python" keeps Python's own (SIGTERM and SIGHUP end the
# process at once). It prints what it caught, then raises it again.
WRITER = """
import contextlib, sys, time
from pathlib import Path
from neural_stack.cli import stop_on_signals
from neural_stack.files import atomic_open

target, sent, handlers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
target.write_text("old")
finished = False
with stop_on_signals() if handlers == "cli" else contextlib.nullcontext():
    try:
        with atomic_open(target) as f:
            f.write("new, first half;")
            f.flush()
            print("writing", flush=True)
            while not sent.exists():
                time.sleep(0.01)
            f.write(" second half")
            finished = True
    except KeyboardInterrupt as e:
        print(type(e).__name__, repr(str(e)), "finished:", finished, flush=True)
        raise
print("no signal came", flush=True)
"""


def write_while_signalled(tmp_path, signums, handlers="cli"):
    "Run WRITER, send `signums` during its write; its (returncode, stdout, stderr)."
    target, sent = tmp_path / "last.pt", tmp_path / "sent"
    argv = [sys.executable, "-c", WRITER, str(target), str(sent), handlers]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        first = proc.stdout.readline()
        assert first == "writing\n", proc.communicate(timeout=30)
        for signum in signums:
            proc.send_signal(signum)
            time.sleep(0.05)  # two of one signal, sent at once, could arrive as one
        sent.touch()
        out, err = proc.communicate(timeout=30)
    assert target.read_text() == "new, first half; second half"  # whole, and new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "sent"]
    return proc.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_run_after_the_write(tmp_path, signum):
    returncode, out, err = write_while_signalled(tmp_path, [signum])
    name = signal.Signals(signum).name
    assert out == f"Stopped '{name}' finished: True\n"
    assert returncode == 1 and err.rstrip().endswith(f"Stopped: {name}")


def test_ctrl_c_twice_raises_one_keyboard_interrupt_after_the_write(tmp_path):
    returncode, out, err = write_while_signalled(tmp_path, [signal.SIGINT] * 2)
    assert out == "KeyboardInterrupt '' finished: True\n"
    # an uncaught KeyboardInterrupt ends Python as SIGINT does
    assert returncode == -signal.SIGINT and err.count("Traceback") == 1
    assert err.endswith("\nKeyboardInterrupt\n")


def test_sigterm_with_its_default_action_ends_the_process_after_the_write(tmp_path):
    returncode, out, err = write_while_signalled(tmp_path, [signal.SIGTERM], "python")
    assert (returncode, out, err) == (-signal.SIGTERM, "", "")


def test_no_signal_no_interruption(tmp_path):
    returncode, out, err = write_while_signalled(tmp_path, [])
    assert (returncode, out, err) == (0, "no signal came\n", "")


def test_handlers_are_swapped_while_writing_and_put_back_exactly(tmp_path):
    def mine(signum, frame):
        raise AssertionError("not while writing")

    # Python handlers on all three: a runner started with nohup ignores SIGHUP, and an
    # ignored signal is, by design, not held
    old = {s: signal.signal(s, mine) for s in STOPS}
    try:
        before = {s: signal.getsignal(s) for s in STOPS}
        with atomic_open(tmp_path / "f") as f:
            during = {s: signal.getsignal(s) for s in STOPS}
            f.write("x")
        assert {s: signal.getsignal(s) for s in STOPS} == before
        assert all(before[s] is mine for s in STOPS)
        assert all(during[s] is not before[s] for s in STOPS)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_ignored_signals_stay_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with deferred_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            signal.raise_signal(
                signal.SIGHUP
            )  # ignored: nothing held, nothing handed on
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_outside_the_main_thread_nothing_is_held(tmp_path):
    seen = []

    def write():
        with atomic_open(tmp_path / "f") as f:
            seen.append(signal.getsignal(signal.SIGINT))
            f.write("from a thread")

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
    assert (tmp_path / "f").read_text() == "from a thread"


def test_a_failed_write_still_hands_the_signal_on(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(KeyboardInterrupt) as e:
        with atomic_open(tmp_path / "f") as f:
            f.write("new")
            signal.raise_signal(signal.SIGINT)
            raise ValueError("the writer fails")
    assert isinstance(e.value.__context__, ValueError)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    assert (tmp_path / "f").read_text() == "old"
