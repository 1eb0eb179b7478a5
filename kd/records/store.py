"""The checkpoint store (--store, $KD_STORE, default ./checkpoints): checkpoints with their sha256
sidecars, resumable run states, and the locks that keep two processes from training one run.

    <store>/<cell id, '/' -> '__'>/seed<k>.pt         a trained model's state_dict
    <store>/<cell id>/seed<k>.sha256                   "<sha256>  <source>"
    <store>/runs/<cell id>/seed<k>.state.pt            per-epoch resume state (deleted when the run ends)
    <store>/runs/<cell id>/seed<k>.lock                held (fcntl.flock) while the run trains

Every file is written to a temporary file unique to the writing process, in the same folder, and
moved into place with os.replace, so a reader never sees half a file and two writers never share
a temporary file. (torch is imported where it is used: `kd list --status` reads the store without it.)
A resume state carries a digest of the resolved configuration (config_digest);
(kd.catalog.spec.RunSpec.digest); a state whose digest differs from the run's is refused, never resumed with other settings.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kd.errors import KDError

if TYPE_CHECKING:
    import torch
from kd.records.files import check_inside, flock, open_write

def store_root(override: str | os.PathLike | None = None) -> Path:
    """Where checkpoints and resumable run states live (--store, KD_STORE, default ./checkpoints; an
    empty KD_STORE is unset, never the working directory)."""
    return Path(override or os.environ.get("KD_STORE") or "checkpoints")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_name(cid: str) -> str:
    return cid.replace("/", "__").replace("~", "@")


def checkpoint_path(cid: str, seed: int, store: Path) -> Path:
    return store / safe_name(cid) / f"seed{seed}.pt"


def state_path(cid: str, seed: int, store: Path) -> Path:
    return store / "runs" / safe_name(cid) / f"seed{seed}.state.pt"


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` into a temporary file unique to this process, then os.replace onto `path`.
    A failed write (a full disk) leaves `path` as it was and is one KDError line."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise KDError(f"cannot write {path}: {e.strerror or e}; it is as it was") from None
        raise


def _torch_save(obj, tmp: Path) -> None:
    """torch.save through a file object: a path would put the (unique) temporary name into the
    archive, and the same weights would get another sha256. torch's writer reports a failed write (a
    full disk, `ulimit -f`) as a RuntimeError: raised here as the OSError it is."""
    import torch
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:            # e.g. "[enforce fail at inline_container.cc:671] . unexpected pos"
            why = str(e).splitlines()[0].split("] ")[-1].strip(" .")[:120]
            raise OSError(f"torch.save could not write the file ({why}: a full disk or a file-size limit)") from None


def _write_sidecar(path: Path, digest: str, source: str) -> None:
    atomic_write(path.with_suffix(".sha256"), lambda t: t.write_text(f"{digest}  {source}\n"))


def save_checkpoint(model: "torch.nn.Module", path: Path, source: str = "trained") -> str:
    """Plain state_dict + a sidecar with its sha256; returns the sha256."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}   # canonical layout: the bytes (and
    atomic_write(path, lambda t: _torch_save(sd, t))                   # sha256) do not depend on channels_last
    digest = sha256_file(path)
    _write_sidecar(path, digest, source)
    return digest


def install_checkpoint(src: Path, dst: Path, digest: str, source: str) -> None:
    """Copy a checked checkpoint into the store (kd import-teacher)."""
    import shutil
    atomic_write(dst, lambda t: shutil.copyfile(src, t))
    _write_sidecar(dst, digest, source)


def verified_checkpoint(path: Path, expected_sha256: str | None = None) -> str:
    """The checkpoint's sha256, checked against `expected_sha256`, else its sidecar; a missing file,
    sidecar or a mismatch is one KDError line. (kd.models.load_weights then loads it strictly.)"""
    if not path.is_file():
        raise KDError(f"checkpoint not found: {path}")
    digest = sha256_file(path)
    side = path.with_suffix(".sha256")
    want = expected_sha256
    if want is None and side.is_file():
        words = side.read_text(errors="replace").split()
        want = words[0] if words else ""
        if len(want) != 64 or any(c not in "0123456789abcdefABCDEF" for c in want):
            raise KDError(f"{side}: not a sha256 sidecar (empty or malformed); import the checkpoint again with "
                          f"`kd import-teacher` and its checksum")
    if want is None:
        raise KDError(f"{path}: no sha256 recorded; import it with `kd import-teacher` and its checksum")
    if digest != want.lower():
        raise KDError(f"{path}: sha256 mismatch (file {digest[:12]}…, expected {want[:12]}…); refusing to use it")
    return digest


# --- resume states ---------------------------------------------------------------------------------

def save_state(path: Path, state: dict, digest: str, teacher_sha256: str | None) -> None:
    atomic_write(path, lambda t: _torch_save({**state, "config_digest": digest, "teacher_sha256": teacher_sha256}, t))


def load_state(path: Path, digest: str, teacher_sha256: str | None = None, check_teacher: bool = False,
               map_location="cpu") -> dict | None:
    """The resume state at `path` (None when there is none). A state that is unreadable, foreign
    (not written by this kd for this run) or written under another configuration (digest) or
    teacher is refused with one line that says how to start over; it is never resumed."""
    if not path.is_file():
        return None
    start_over = f"to start over, delete it: rm '{path}'"
    import warnings

    import torch
    try:
        with warnings.catch_warnings():      # torch's note on a foreign pickle protocol: not a second line
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or malicious: one refusal
        raise KDError(f"{path}: unreadable resume state ({type(e).__name__}); {start_over}") from None
    if not isinstance(state, dict) or not isinstance(state.get("config_digest"), str):
        raise KDError(f"{path}: not a resume state written by this kd (no configuration digest); {start_over}")
    if state["config_digest"] != digest:
        raise KDError(f"{path}: saved under another configuration (the cell, recipe, overrides or seed changed "
                      f"since); resuming would mix settings; {start_over}")
    if check_teacher and state.get("teacher_sha256") != teacher_sha256:
        raise KDError(f"{path}: saved with another teacher checkpoint; {start_over}")
    return state


# --- locks and writability -------------------------------------------------------------------------

def lock_path(store: Path, cid: str, seed: int) -> Path:
    return store / "runs" / safe_name(cid) / f"seed{seed}.lock"


@contextlib.contextmanager
def run_lock(store: Path, cid: str, seed: int):
    """Hold an exclusive lock on (cell, seed) in the store while the run trains. A second process
    asking for the same lock is refused at once with one line (it would train the same run twice
    and append a duplicate line). The lock goes with the process (flock), so a killed run leaves
    no stale lock; the lock file is removed on release (while still held; a process that opened
    the removed file notices that its file is no longer the lock file and opens it again)."""
    path = lock_path(store, cid, seed)
    check_inside(path, store, "lock file")
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_write(path, os.O_RDWR | os.O_CREAT, "lock file")
        except OSError as e:
            raise KDError(f"cannot write to the store {store}: {e.strerror or e}") from None
        try:
            flock(fd, path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KDError(f"{cid} seed {seed} is being trained by another process right now (lock {path}); "
                          f"wait for it to finish") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)           # releases the lock


def check_writable(path: Path, what: str, folder: bool) -> None:
    """Refuse, before anything is trained, a folder (folder=True) or file that cannot be written:
    it is writable and of its kind, or it does not exist yet and its nearest existing ancestor is a
    writable folder. A dangling link is refused (writing would create its target), and so is a file
    that is a link (kd writes no file through a link: kd.records.files). Creates nothing."""
    p = Path(path).absolute()
    if not folder and p.is_symlink():
        raise KDError(f"cannot write the {what} {path}: it is a symbolic link (kd writes no file through a link; "
                      f"remove it)")
    if p.exists() or p.is_symlink():
        kind_ok = p.is_dir() if folder else (p.is_file() and not p.is_dir())
        if not (kind_ok and os.access(p, os.W_OK)):
            raise KDError(f"cannot write the {what} {path}: it is not a writable {'folder' if folder else 'file'}")
        return
    q = p.parent
    while not (q.exists() or q.is_symlink()):
        q = q.parent
    if not (q.is_dir() and os.access(q, os.W_OK | os.X_OK)):
        raise KDError(f"cannot write the {what} {path}: {q} is not a writable folder")
