"""The round trip's re-export, made by a child process while this one compares: two cores at work.

    for row in reexport_rows(ReexportRequest(dsn, manifest, "global", import_id, reset)):
        ...

The child (``python -m backup_assets.core.reexport``) reads the request from its stdin, runs
:func:`backup_assets.core.roundtrip.reexported` (the export of what the import wrote, normalised as the round
trip compares it) and writes the rows to its stdout in frames of :data:`FRAME_ROWS` rows. The pipes carry
everything: the DSN never appears in a command line or an environment, and no row touches the disk. The
pipe's buffer bounds what is in flight; the child waits while the comparison is behind. An error in the
child is raised again here, as it was raised there; a child that dies says so with its exit status.
Each call starts a new child (and so a new snapshot); closing the iterator early ends the child.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import BackupAssetsError, TargetError
from .manifest import Manifest
from .spill import decode_rows, encode_rows

__all__ = ["ReexportRequest", "reexport_rows", "FRAME_ROWS"]

#: Rows per frame the child writes.
FRAME_ROWS = 1000
_ROWS, _ERROR, _DONE = b"R", b"E", b"D"
_HEADER = 5  # tag byte, then the payload's length in 4 bytes
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux's fcntl to grow a pipe's buffer


@dataclass(frozen=True)
class ReexportRequest:
    """What the child re-exports: the import ``import_id`` in ``scope`` from the database at ``dsn``,
    ``reset`` fields (model -> fields) left out."""

    dsn: str
    manifest: Manifest
    scope: str
    import_id: str
    reset: Mapping[str, frozenset[str]]

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "dsn": self.dsn,
                "manifest": self.manifest.to_json(),
                "scope": self.scope,
                "import_id": self.import_id,
                "reset": {model: sorted(fields) for model, fields in self.reset.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReexportRequest:
        raw = json.loads(data)
        return cls(
            raw["dsn"],
            Manifest.from_json(raw["manifest"], "<re-export request>"),
            raw["scope"],
            raw["import_id"],
            {model: frozenset(fields) for model, fields in raw["reset"].items()},
        )


def reexport_rows(request: ReexportRequest) -> Iterator[Any]:
    """The re-exported rows, made by a child process (see the module docstring)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        _grow_pipe(proc.stdout.fileno())
        try:
            proc.stdin.write(request.to_bytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once: its exit status says so below
        yield from _read_frames(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, OSError):
        pass  # a smaller buffer only means less overlap


def _read_frames(proc: subprocess.Popen) -> Iterator[Any]:
    stdout = proc.stdout
    assert stdout is not None
    while True:
        header = stdout.read(_HEADER)
        payload = stdout.read(int.from_bytes(header[1:], "big")) if len(header) == _HEADER else b""
        tag = header[:1]
        if tag == _ROWS:
            yield from decode_rows(payload)
        elif tag == _ERROR:
            raise _error_from(payload)
        elif tag == _DONE:
            return
        else:
            raise TargetError(
                f"the re-export process ended before it was done (exit status {proc.wait()}; its error output says why)"
            )


def _error_from(payload: bytes) -> BaseException:
    try:
        error = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - an exception class that cannot be rebuilt here
        return TargetError("the re-export failed (its error output says why)")
    return error if isinstance(error, BaseException) else TargetError(f"the re-export failed: {error!r}")


def _frame(out: IO[bytes], tag: bytes, payload: bytes = b"") -> None:
    out.write(tag + len(payload).to_bytes(4, "big") + payload)


def _serve(request: ReexportRequest, out: IO[bytes]) -> None:
    from .roundtrip import reexported  # the round trip imports this module

    batch: list[Any] = []
    for row in reexported(request):
        batch.append(row)
        if len(batch) >= FRAME_ROWS:
            _frame(out, _ROWS, encode_rows(batch))
            batch = []
    if batch:
        _frame(out, _ROWS, encode_rows(batch))
    _frame(out, _DONE)


def _main() -> int:
    """The child: frames on the original stdout; anything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        _serve(ReexportRequest.from_bytes(sys.stdin.buffer.read()), out)
    except BrokenPipeError:
        return 1  # the parent stopped reading
    except Exception as e:  # noqa: BLE001 - every failure is sent back, to be raised in the parent
        if not isinstance(e, BackupAssetsError):
            traceback.print_exc()
        try:
            payload = pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled
            payload = pickle.dumps(TargetError(f"the re-export failed: {type(e).__name__}: {e}"))
        _frame(out, _ERROR, payload)
    try:
        out.close()
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
