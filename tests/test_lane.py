"""The lane's wire format and the shared-memory spool that carries inputs to local workers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from agent.lane import Spool, lane_message, read_reply, reply_message
from functions.tensors import from_npy


def test_spool_reuses_answered_slots_and_deletes_abandoned_ones(tmp_path):
    spool = Spool(tmp_path)
    assert spool.usable and (spool.dir.stat().st_mode & 0o777) == 0o700
    big, small = np.arange(1000, dtype=np.float32), np.arange(3, dtype=np.int16)
    name, size = spool.put(big)
    assert (spool.dir / name).stat().st_mode & 0o777 == 0o600
    assert (from_npy(Spool(tmp_path).read(name, size)) == big).all()  # a worker's side
    spool.done(name)  # answered: the next input overwrites the same file
    again, small_size = spool.put(small)
    assert again == name and (from_npy(spool.read(name, small_size)) == small).all()
    other, _ = spool.put(big)  # two in flight: two slots
    assert other != name
    spool.discard(name)  # no answer: a late reader finds nothing, and the name is retired
    assert spool.read(name, small_size) is None
    assert spool.put(small)[0] not in (name, other)
    spool.close()
    assert not list(spool.dir.iterdir())


def test_spool_round_trip_copies_nothing_it_need_not(tmp_path):
    """The gateway's side writes the array's own memory (no ``.npy`` bytes built first); the
    worker's side reads into one reused buffer and parses it as a view (``np.frombuffer``),
    which stays right for the call it was read for."""
    gateway, worker = Spool(tmp_path), Spool(tmp_path)
    fortran = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    a, b = np.arange(50_000, dtype=np.float32).reshape(1, 250, 200), fortran
    (name_a, size_a), (name_b, size_b) = gateway.put(a), gateway.put(b)
    first = worker.read(name_a, size_a)
    batch = from_npy(first)
    assert (batch == a).all()
    assert np.shares_memory(batch, np.frombuffer(first, dtype=np.uint8))  # parsed in place
    assert (from_npy(worker.read(name_b, size_b)) == b).all()  # the next read reuses it
    assert (from_npy(worker.read(name_a, size_a), copy=True) == a).all()
    assert worker.read(name_a, size_a + 1) is None  # a short file is no input
    gateway.close()


@pytest.mark.parametrize("name", ["../escape.npy", "/etc/passwd", "sub/x.npy", "x.txt"])
def test_spool_names_cannot_leave_its_directory(tmp_path, name):
    with pytest.raises(ValueError, match="not a spool file name"):
        Spool(tmp_path).read(name, 10)


def test_spool_is_unusable_when_shared_with_others(tmp_path):
    """A directory others can read (or a root that does not exist): inputs go inline."""
    (tmp_path / f"brulee-{os.getuid()}").mkdir(mode=0o755)
    os.chmod(tmp_path / f"brulee-{os.getuid()}", 0o755)
    spool = Spool(tmp_path)
    assert not spool.usable and spool.put(np.zeros(3)) is None
    assert not Spool(tmp_path / "no" / "such" / "root").usable


def test_spool_sweeps_slots_of_gone_processes_only(tmp_path):
    import subprocess

    spool = Spool(tmp_path)
    mine, _ = spool.put(np.zeros(3))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (spool.dir / f"{gone.pid}-1.npy").write_bytes(b"x")  # a gateway that died
    (spool.dir / "stray.npy").write_bytes(b"x")  # not a slot: removed once old
    assert spool.sweep(max_age_s=600) == 1
    past = time.time() - 3600
    os.utime(spool.dir / "stray.npy", (past, past))
    assert spool.sweep(max_age_s=600) == 1
    assert [p.name for p in spool.dir.iterdir()] == [mine]


def test_messages_carry_bytes_untouched():
    payload = bytes(range(256)) * 3  # newlines and all
    head, _, body = lane_message({"model": "m", "reply": "r"}, payload).partition(b"\n")
    assert body == payload
    answer = {"result": {"outputs": [[0.5, 1.0]]}, "cache": "hit", "exec_s": 0.001, "worker": "w"}
    got_head, got_body = read_reply(reply_message(answer))
    assert got_head == {"cache": "hit", "exec_s": 0.001, "worker": "w"}
    assert got_body == b'{"outputs":[[0.5,1.0]]}'
    assert read_reply(reply_message({"error": "bad", "status": 400})) == (
        {"error": "bad", "status": 400},
        b"",
    )


def test_a_gateway_uses_the_spool_only_if_every_worker_sees_it(tmp_path):
    """Same host name is not enough (containers, systemd's PrivateDevices): a worker's marker
    must be visible in the gateway's own spool directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    worker, same, other = Spool(tmp_path / "a"), Spool(tmp_path / "a"), Spool(tmp_path / "b")
    marker = worker.announce()
    assert marker and same.reaches([marker]) and not other.reaches([marker])
    assert not same.reaches([marker, ""])  # a worker without a spool: inline for everyone
    assert not same.reaches([])
    worker.close()
    assert not same.reaches([marker])
