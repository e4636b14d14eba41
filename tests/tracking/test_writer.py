"""MLflow writer: who owns a run (stale-run marking relies on it)."""

from __future__ import annotations


def test_owner_alive():
    import socket
    import subprocess
    import sys

    from bench.tracking.writer import owner_alive, owner_tags

    assert owner_alive(owner_tags("me"))
    assert owner_alive({})  # no owner tags: cannot tell, leave the run alone
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = {**owner_tags("x"), "bench.owner.pid": child.stdout.strip(), "bench.owner.start": ""}
    assert not owner_alive(dead)
    assert owner_alive({**dead, "bench.owner.host": socket.gethostname() + "-elsewhere"})
    mine = owner_tags("x")
    if mine["bench.owner.start"]:  # /proc available: a reused pid is told apart
        assert not owner_alive({**mine, "bench.owner.start": "1"})
    if mine["bench.owner.boot_id"]:  # and so is a run from before a reboot
        assert not owner_alive({**mine, "bench.owner.boot_id": "another-boot"})
