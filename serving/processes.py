"""Stopping a child process we started: by its own PID, gracefully, within a bound."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, grace_s: float = 60.0) -> int:
    """Send ``sig`` (SIGINT: Serve shuts down cleanly; SIGTERM: Triton drains), wait up to
    ``grace_s``, then SIGKILL. Returns the exit code; a process already gone is left alone."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=30)
