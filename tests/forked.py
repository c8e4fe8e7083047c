"""Run `dslm` in a forked child of the test process: a real process (its own exit, its own process
group, `os._exit` allowed) that starts in milliseconds because torch, DeepSpeed and transformers are
already imported."""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str


def _child(args: list[str], env: dict[str, str] | None, umask: int | None, out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        if umask is not None:
            os.umask(umask)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        from dslm import cli

        try:
            cli.main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the interpreter would print for an uncaught exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 300, umask: int | None = None) -> Result:
    """`dslm ARGS` in a forked child (with `env` instead of this process's, and `umask`): its exit status,
    stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(args, env, umask, out.fileno(), err.fileno())
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"dslm {' '.join(args)} ran over {timeout} s")
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Result(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
