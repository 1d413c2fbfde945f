"""Helpers for the fault suite: run pipeline.py as a user (or cron) would, and kill it."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = str(ROOT / "pipeline.py")


def cli(*args, cwd=None, timeout=600):
    """``(returncode, stdout, stderr)`` of ``python pipeline.py ARGS``."""
    p = subprocess.run([sys.executable, PIPELINE, *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return p.returncode, p.stdout, p.stderr


def kill_when(args, ready: Callable[[], bool], cwd=None, delay: float = 0.0, timeout: float = 300) -> bool:
    """Start ``pipeline.py ARGS``; SIGKILL it ``delay`` s after ``ready()`` turns true.

    Returns True when it was killed, False when it finished first."""
    p = subprocess.Popen([sys.executable, PIPELINE, *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None and not ready():
            time.sleep(0.02)
        if delay:
            time.sleep(delay)
        if p.poll() is not None:
            return False
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def make_rng() -> random.Random:
    """A logged random source: HAR_VIT_FAULT_SEED=<n> repeats a failing run exactly."""
    seed = int(os.environ.get("HAR_VIT_FAULT_SEED", random.randrange(1 << 30)))
    print(f"fault seed {seed} (HAR_VIT_FAULT_SEED={seed} repeats this run)")
    return random.Random(seed)
