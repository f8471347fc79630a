"""`hadskip predict -i -` answers each line of stdin as it arrives (runtime/jsonl.py Arriving), not at EOF."""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest

from hadskip.runtime.jsonl import PAUSE, Arriving, read_inputs

TIMEOUT = 60  # seconds to wait for one answer: the model load plus one tiny prediction, with room on a busy box


def _read_line(proc) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    if not ready:
        proc.kill()
        pytest.fail(f"no answer within {TIMEOUT} s: predict waits for the end of stdin")
    return proc.stdout.readline()


@pytest.mark.skipif(sys.platform == "win32", reason="select on pipes")
@pytest.mark.parametrize("fmt, lines", [
    ("auto", ["a good movie", "", "not good at all"]),
    ("jsonl", ['{"text": "a good movie", "id": "a"}', '{"text": "the plot", "text_pair": "was dull", "id": 7}']),
])
def test_stdin_is_answered_line_by_line(model_dir, fmt, lines):
    proc = subprocess.Popen([sys.executable, "-m", "hadskip.cli", "predict", str(model_dir), "-i", "-", "--quiet",
                             "--format", fmt], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        answers = []
        for n, line in enumerate(lines):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()  # stdin stays open: the answer must come before the end of the input
            answer = json.loads(_read_line(proc))
            assert answer["index"] == n
            answers.append(answer)
        proc.stdin.close()
        assert proc.stdout.read() == ""  # nothing more at the end
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    for line, answer in zip(lines, answers, strict=True):
        if line.strip():
            assert answer["label"] in ("label0", "label1") and "layers" in answer
        else:
            assert answer["error"] == "empty text"
    if fmt == "jsonl":
        assert [a["id"] for a in answers] == ["a", 7]


def test_arriving_gives_every_line_in_order_and_its_read_error():
    items = list(Arriving(iter([b"one\n", b"two\n"])))
    assert [i for i in items if i is not PAUSE] == [b"one\n", b"two\n"]
    rows = [r for r in read_inputs(items) if r is not PAUSE]
    assert [r.input for r in rows] == ["one", "two"]

    def broken():
        yield b"one\n"
        raise OSError("device gone")

    got = []
    with pytest.raises(OSError, match="device gone"):
        for item in Arriving(broken()):
            got.append(item)
    assert b"one\n" in got
