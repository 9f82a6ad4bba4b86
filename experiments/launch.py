"""Launching train.py and other scripts for the runner: a subprocess, or in-process for tests."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

from records import ROOT


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C / SIGTERM): its checkpoint is saved, re-running resumes."""


# Scripts that execute on import: in-process runs call their library entry point instead.
IN_PROCESS = {"train.py": "gcnn.training.cli", "evaluate.py": "gcnn.evaluation.cli"}


def launch(
    script: str,
    argv: list[str],
    in_process: bool = False,
    launcher: list[str] | None = None,
    capture: bool = False,
    threads: int | None = None,
    prefix: str = "",
) -> tuple[int, str, str]:
    """Run `python script argv` (exit status, stdout if captured, stderr's last lines);
    `launcher` (e.g. torchrun) replaces `python` for train.py; `threads` sets OMP_NUM_THREADS;
    `prefix` marks each echoed line (several runs at once)."""
    if in_process:
        return _launch_in_process(script, argv, capture)
    python = launcher if (launcher and script == "train.py") else [sys.executable]
    cmd = [*python, str(ROOT / script), *argv]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
    }
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,  # paths in the flags are relative to the repository (e.g. --config)
    )
    try:
        if capture:
            out, err = proc.communicate()
            sys.stderr.write(err)
            return proc.returncode, out, err
        tail: list[str] = []
        for line in proc.stderr:  # echo as it comes, keep the end for the error message
            sys.stderr.write(f"[{prefix}] {line}" if prefix else line)
            tail = (tail + [line])[-20:]
        return proc.wait(), "", "".join(tail)
    except KeyboardInterrupt:
        proc.wait()  # train.py saves its checkpoint on Ctrl-C, then exits 130
        raise Interrupted from None


def _launch_in_process(script: str, argv: list[str], capture: bool) -> tuple[int, str, str]:
    from gcnn.errors import run_cli

    if script in IN_PROCESS:
        main = importlib.import_module(IN_PROCESS[script]).main
        entry = lambda: main(argv)  # noqa: E731
    else:
        spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a script's dataclasses look their module up
        spec.loader.exec_module(module)
        entry = lambda: run_cli(lambda: module.main(argv))  # noqa: E731
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stderr(err):
        if capture:
            with contextlib.redirect_stdout(out):
                rc = entry()
        else:
            rc = entry()
    sys.stderr.write(err.getvalue())
    return int(rc or 0), out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
