"""Helpers shared by the test files: run an installed console script, check its one-line error.

    from helpers import BIN, run, one_line_error
    r = run('vml-data', 'path', 'nope', env={'VML_DATA': str(tmp)})
    line = one_line_error(r, 'vml-data', 'nope: not a file')
"""
import os, subprocess, sys
from pathlib import Path

__all__ = ['BIN', 'script', 'run', 'one_line_error']

BIN = Path(sys.executable).parent    # the venv's bin/: where `pip install -e .` put the console scripts


def script(name):
    "The installed console script `name` (a bare name like 'vml-run'); a path is returned unchanged."
    p = Path(name)
    return p if len(p.parts) > 1 else BIN/name


def run(*args, env=None, threads=None, cwd=None, timeout=600, check=False, **kw):
    """Run console script `args[0]` (name or path) with the other args (str() of each), capturing text output.

    `env`: variables added to (not replacing) os.environ, a value None removes one; `threads`: sets OMP_NUM_THREADS;
    `check`: assert exit 0 (stderr in the message). Other keywords go to subprocess.run. Returns the CompletedProcess."""
    e = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if threads is not None: e['OMP_NUM_THREADS'] = str(threads)
    cmd = [str(script(args[0])), *map(str, args[1:])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=None if cwd is None else str(cwd),
                       timeout=timeout, **kw)
    if check: assert r.returncode == 0, f'{cmd[0]} exited {r.returncode}:\n{r.stderr[-3000:]}'
    return r


def one_line_error(r, prog, text='', *, code=2, at_start=False):
    """Assert that `r` failed as a console script should on bad input: exit `code`, stderr exactly one line
    `<prog>: error: ...` containing `text` (right after 'error: ' when `at_start`), no traceback. Returns the line."""
    assert r.returncode == code, (r.returncode, r.stdout[-1000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    head = f'{prog}: error: '
    assert lines[0].startswith(head + (text if at_start else '')), lines[0]
    assert text in lines[0], (text, lines[0])
    return lines[0]
