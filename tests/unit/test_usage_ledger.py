"""gateway_kit.usage: the ledger (one file per replica per UTC day, whole lines from many writers) and emit()."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway_kit.settings import Settings
from gateway_kit.usage import Ledger, emit, ledger_file_name
from unit.test_usage_parser import DAY1, record  # one record maker for the format and the ledger tests

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-11-22"  # DAY1's UTC day


class Clock:
    def __init__(self, t: float = DAY1) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines_of(directory: Path) -> list[dict]:
    out = []
    for path in sorted(directory.glob("usage-*.jsonl")):
        for line in path.read_text().splitlines():
            out.append(json.loads(line))  # raises if any line is not whole
    return out


# -- the ledger -------------------------------------------------------------------------------------------


def test_the_ledger_writes_one_file_per_replica_per_utc_day(tmp_path):
    clock = Clock()
    ledger = Ledger(tmp_path, "mlflow-gateway-1", clock=clock)
    assert ledger.append(record(1))
    clock.t += 86400
    assert ledger.append(record(2))
    ledger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "usage-mlflow-gateway-1-2026-11-22.jsonl",
        "usage-mlflow-gateway-1-2026-11-23.jsonl",
    ]
    assert [r["request_id"] for r in lines_of(tmp_path)] == ["req-1", "req-2"]


def test_the_replica_name_is_made_safe_for_a_file_name():
    assert ledger_file_name("gw/1 a", DAY) == f"usage-gw_1_a-{DAY}.jsonl"


def test_a_restarted_replica_appends_to_the_same_file_nothing_lost_or_doubled(tmp_path):
    first = Ledger(tmp_path, "r1", clock=Clock())
    for n in range(50):
        first.append(record(n))
    first.close()  # the gateway stops ...
    second = Ledger(tmp_path, "r1", clock=Clock())  # ... and starts again
    for n in range(50, 80):
        second.append(record(n))
    second.close()
    ids = [r["request_id"] for r in lines_of(tmp_path)]
    assert ids == [f"req-{n}" for n in range(80)]


WRITER = textwrap.dedent("""
    import sys
    from gateway_kit.usage import Ledger, UsageRecord
    directory, who, count, reopen = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["reopen"]
    ledger = Ledger(directory, "shared")
    pad = "x" * 3000  # long lines: a torn write would show
    for n in range(count):
        ledger.append(UsageRecord(ts="2026-11-22T10:00:00.000Z", request_id=f"{who}-{n}", route="/r", error=pad))
        if reopen:  # as a worker that starts while the others write: it looks at the file's last byte
            ledger.close()
""")


def run_writers(directory: Path, writers: int, count: int, *mode: str) -> None:
    """`writers` WRITER processes side by side, named w0, w1, ..., each appending `count` records."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory), f"w{k}", str(count), *mode], cwd=REPO)
        for k in range(writers)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0


def test_concurrent_writers_in_several_processes_only_ever_write_whole_lines(tmp_path):
    run_writers(tmp_path, 6, 400)
    records = lines_of(tmp_path)  # every line parses
    assert len(records) == 6 * 400
    assert {r["request_id"] for r in records} == {f"w{k}-{n}" for k in range(6) for n in range(400)}


def test_workers_starting_while_others_write_never_take_a_record_being_written_for_a_fragment(tmp_path):
    # Each record is written by a freshly opened ledger, so the last-byte check runs thousands of times while
    # other processes are in the middle of a write. Unlocked, about 5% of the lines came out empty.
    run_writers(tmp_path, 4, 500, "reopen")
    (path,) = tmp_path.glob("*.jsonl")
    lines = path.read_text().split("\n")
    assert lines.pop() == ""
    assert [n for n, line in enumerate(lines) if not line] == []
    assert sorted(json.loads(line)["request_id"] for line in lines) == sorted(
        f"w{k}-{n}" for k in range(4) for n in range(500)
    )


def test_a_writer_killed_mid_stream_loses_at_most_its_last_line_and_the_next_writer_starts_clean(tmp_path):
    # Linux may stop a write() that spans pages at a page boundary when SIGKILL arrives: a torn last line is
    # possible, nothing more.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "killed", "10000000"], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) < 2_000_000:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    (path,) = tmp_path.glob("*.jsonl")
    *whole, tail = path.read_text().split("\n")
    assert len(whole) > 100 and all(json.loads(line)["error"] == "x" * 3000 for line in whole)
    assert tail == "" or (tail.startswith('{"type":"usage"') and len(tail) < len(whole[0]))
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "next", "3"], cwd=REPO, check=True, timeout=60)
    after = path.read_text().split("\n")[len(whole) + bool(tail) :]
    assert [json.loads(line)["request_id"] for line in after if line] == ["next-0", "next-1", "next-2"]


def test_a_ledger_opening_a_file_that_ends_in_a_fragment_ends_it_first(tmp_path):
    path = tmp_path / ledger_file_name("r1", DAY)
    path.write_text(record(0).to_json() + "\n" + record(1).to_json()[:80])
    assert Ledger(tmp_path, "r1", clock=Clock()).append(record(2))
    lines = path.read_text().splitlines()
    assert lines[1] == record(1).to_json()[:80]
    assert json.loads(lines[2])["request_id"] == "req-2"


def full_disk(directory: Path, replica: str = "r1") -> None:
    """Make today's ledger file /dev/full: every write fails with ENOSPC, as on a full disk."""
    (directory / ledger_file_name(replica, DAY)).symlink_to("/dev/full")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_never_raises_and_is_logged_once_a_minute(tmp_path, caplog):
    full_disk(tmp_path)
    clock = Clock()
    ledger = Ledger(tmp_path, "r1", clock=clock)
    caplog.set_level(logging.ERROR, logger="gateway_kit.usage")
    for n in range(120):  # two minutes of one request every second
        clock.t = DAY1 + n
        assert ledger.append(record(n)) is False
    reports = [r for r in caplog.records if r.name == "gateway_kit.usage"]
    assert len(reports) == 2  # at t=0 and at t=60, not 120 times
    assert "No space left on device" in reports[0].getMessage()
    assert "1 record(s) not written since the last report" in reports[0].getMessage()
    assert "60 record(s) not written since the last report (61 in all)" in reports[1].getMessage()
    assert ledger.failures == 120 and ledger.written == 0


def test_a_missing_ledger_directory_fails_softly_and_recovers_when_it_appears(tmp_path, caplog):
    directory = tmp_path / "volume" / "ledger"
    clock = Clock()
    ledger = Ledger(directory, "r1", clock=clock, create_dir=False)
    caplog.set_level(logging.WARNING, logger="gateway_kit.usage")
    assert ledger.append(record(1)) is False
    assert ledger.failures == 1
    directory.mkdir(parents=True)  # the volume is mounted
    clock.t += 1
    assert ledger.append(record(2)) is True
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway_kit.usage"]
    assert any("cannot write" in m for m in messages)
    assert any("again after 1 record(s) could not be written" in m for m in messages)
    assert [r["request_id"] for r in lines_of(directory)] == ["req-2"]


def test_a_ledger_path_that_cannot_be_a_directory_never_raises(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger directory should be")
    ledger = Ledger(blocker / "ledger", "r1")
    assert ledger.append(record()) is False
    assert ledger.failures == 1


def test_ledger_from_env(tmp_path):
    assert Ledger.from_settings(Settings.from_env({"GATEWAY_LEDGER_DIR": "off"})) is None
    ledger = Ledger.from_settings(
        Settings.from_env({"GATEWAY_LEDGER_DIR": str(tmp_path), "GATEWAY_REPLICA_ID": "gw-7"})
    )
    assert ledger is not None and ledger.directory == tmp_path and ledger.replica == "gw-7"


# -- emit --------------------------------------------------------------------------------------------------


def test_emit_prints_the_line_to_stdout_and_appends_it_to_the_ledger(tmp_path):
    out = tmp_path / "stdout.txt"
    ledger = Ledger(tmp_path / "ledger", "r1", clock=Clock())
    with open(out, "w") as stream:
        line = emit(record(7), ledger, stream=stream)
    ledger.close()
    assert out.read_text() == line + "\n"
    assert [r["request_id"] for r in lines_of(tmp_path / "ledger")] == ["req-7"]


def test_emit_works_with_a_stream_without_a_file_descriptor():
    buf = io.StringIO()
    line = emit(record(1), None, stream=buf)
    assert buf.getvalue() == line + "\n"


def test_emit_never_raises_when_stdout_is_gone(tmp_path):
    stream = open(tmp_path / "x", "w")
    stream.close()
    ledger = Ledger(tmp_path / "ledger", "r1", clock=Clock())
    emit(record(1), ledger, stream=stream)  # closed stdout: no exception, the ledger still gets it
    ledger.close()
    assert len(lines_of(tmp_path / "ledger")) == 1


def test_emit_from_a_real_process_reaches_its_stdout():
    code = (
        "from gateway_kit.usage import UsageRecord, emit\n"
        "emit(UsageRecord(ts='2026-11-22T10:00:00.000Z', request_id='p1', route='/r'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["request_id"] == "p1"
