"""temscript's dummy microscope server (``temscript-server --null``) on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ingest._support import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NullServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        beside = Path(sys.executable).parent / "temscript-server"  # the venv's own
        exe = (
            str(beside)
            if beside.exists()
            else shutil.which("temscript-server") or "temscript-server"
        )
        self.process = subprocess.Popen(
            [exe, "--null", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(answers, 15, "temscript-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Any:
        """A second client, for the test to change the microscope's state with."""
        from temscript import RemoteMicroscope

        return RemoteMicroscope(("127.0.0.1", self.port), timeout=5)
