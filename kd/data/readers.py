"""Readers of standard on-disk layouts (CIFAR pickles, SVHN .mat, image folders, scikit-learn digits),
each registered under its dataset name with its number of classes.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kd.errors import KDError
from kd.registry import DATASETS
from kd.data.core import Dataset, _missing


def _to_tensors(x: np.ndarray, y) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.as_tensor(np.asarray(y), dtype=torch.long)


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python batches contain: builtin containers, bytes, str, int
    (no globals needed) and numpy arrays (numpy's array reconstructors, ndarray, dtype), plus
    _codecs.encode, with which Python 3 writes bytes into protocol-2 pickles (a copy re-pickled by
    Python 3). Any other global (os.system, builtins.eval, ...) is refused, so a crafted batch
    cannot run code. The pattern of the Python docs' "Restricting Globals"."""
    ALLOWED = {("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_cifar_batch(f: Path, label_key: str) -> tuple[np.ndarray, list[int]]:
    """One CIFAR python batch: (uint8 images (N, 3, 32, 32), labels), read with the restricted
    unpickler and checked for shape and type; anything else is a one-line KDError."""
    try:
        with open(f, "rb") as fh:
            entry = _BatchUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as e:
        raise KDError(f"{f}: not a readable CIFAR python batch ({type(e).__name__}: {str(e)[:120]}); "
                      f"re-extract the archive") from None
    x = entry.get("data") if isinstance(entry, dict) else None
    y = entry.get(label_key) if isinstance(entry, dict) else None
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 3072 and isinstance(y, list)
            and len(y) == len(x) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in y)):
        raise KDError(f"{f}: not a CIFAR python batch (expected 'data' N x 3072 and {len(x) if x is not None else 'N'} "
                      f"integer '{label_key}'); re-extract the archive")
    return np.asarray(x, dtype=np.uint8).reshape(-1, 3, 32, 32), y


def _download(url: str, md5: str, root: Path) -> None:
    """Fetch and extract a standard archive, verified against its published md5 (the value
    torchvision's dataset classes check). Offline: nothing happens (the caller reports what is
    missing). A download that fails its checksum is deleted and refused, never extracted."""
    from torchvision.datasets.utils import check_integrity, download_url, extract_archive
    archive = root / url.rsplit("/", 1)[-1]
    try:
        download_url(url, str(root), md5=None)
    except Exception:  # noqa: BLE001 - offline or refused: the caller says what is missing
        return
    if not check_integrity(str(archive), md5):
        archive.unlink(missing_ok=True)
        raise KDError(f"{url}: the downloaded archive fails its md5 check (expected {md5}); deleted, nothing extracted")
    extract_archive(str(archive), str(root))


CIFAR_MD5 = {  # torchvision.datasets.CIFAR10/CIFAR100 tgz_md5
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}


def _cifar(root: Path, folder: str, files: tuple[list[str], list[str]], label_key: str, url: str):
    d = root / folder
    if not d.is_dir():  # online machines fetch the standard archive; offline ones get the error below
        _download(url, CIFAR_MD5[url], root)
    if not d.is_dir():
        raise _missing(d, f"download {url} and extract it into the data root")
    out = []
    for names in files:
        xs, ys = [], []
        for n in names:
            f = d / n
            if not f.is_file():
                raise _missing(f, f"re-extract {url} into the data root")
            x, y = read_cifar_batch(f, label_key)
            xs.append(x)
            ys.extend(y)
        out.append(_to_tensors(np.concatenate(xs), ys))
    return out


@DATASETS.register("cifar10", classes=10)
def cifar10(root: Path) -> Dataset:
    (trx, tr_y), (tex, te_y) = _cifar(root, "cifar-10-batches-py",
                                      ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]), "labels",
                                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    # Normalisation: CIFAR-10 per-channel mean and std of the training pixels.
    return Dataset("cifar10", trx, tr_y, tex, te_y, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100", classes=100)
def cifar100(root: Path) -> Dataset:
    (trx, tr_y), (tex, te_y) = _cifar(root, "cifar-100-python", (["train"], ["test"]), "fine_labels",
                                      "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
    # Normalisation as RepDistiller dataset/cifar100.py.
    return Dataset("cifar100", trx, tr_y, tex, te_y, 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _svhn_split(root: Path, split: str):
    f = root / "svhn" / f"{split}_32x32.mat"
    if not f.is_file():
        raise _missing(f, f"download http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat into <data root>/svhn/")
    from scipy.io import loadmat
    try:
        m = loadmat(str(f))
        x = np.transpose(m["X"], (3, 2, 0, 1))          # (H, W, C, N) -> (N, C, H, W)
        y = m["y"].astype(np.int64).flatten() % 10       # SVHN stores digit 0 as label 10
    except Exception as e:  # noqa: BLE001 - any unreadable or foreign .mat gets the same one-line refusal
        raise KDError(f"{f}: not a readable SVHN .mat file ({type(e).__name__}: {str(e)[:120]}); "
                      f"download it again") from None
    return _to_tensors(x, y)


@DATASETS.register("svhn", classes=10)
def svhn(root: Path) -> Dataset:
    """SVHN cropped digits, train split only (73,257); the 'svhn_extra' dataset adds the extra split."""
    (trx, tr_y), (tex, te_y) = _svhn_split(root, "train"), _svhn_split(root, "test")
    return Dataset("svhn", trx, tr_y, tex, te_y, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                   flip=False)  # flipping digits changes their meaning


@DATASETS.register("svhn_extra", classes=10)
def svhn_extra(root: Path) -> Dataset:
    ds = svhn(root)
    ex, ey = _svhn_split(root, "extra")
    return replace(ds, name="svhn_extra", train_x=torch.cat([ds.train_x, ex]), train_y=torch.cat([ds.train_y, ey]))


IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_image_folder(d: Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """class/file layout (classes sorted by name = label order) decoded into one uint8 tensor.
    Images of another size are resized to `size` (bilinear); the result is cached next to nothing:
    callers cache it (see image_folder)."""
    from PIL import Image
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not classes:
        raise _missing(d, "expected one sub-folder per class with images inside")
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((d / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                try:
                    with Image.open(f) as im:
                        im = im.convert("RGB")
                        if size and im.size != (size, size):
                            im = im.resize((size, size), Image.BILINEAR)
                        xs.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
                except Exception as e:  # noqa: BLE001 - unreadable, truncated or not an image
                    raise KDError(f"{f}: not a readable image ({type(e).__name__}: {str(e)[:120]})") from None
                ys.append(label)
    if not xs:
        raise _missing(d, "no images found")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys), classes


def _read_cache(cache: Path):
    """(x, y, classes) from a cache file, or None (with one warning line) when it is damaged (torn,
    truncated, foreign): the caller decodes the folder again and replaces it."""
    import zipfile
    try:
        with np.load(cache, allow_pickle=False) as z:
            x, y, classes = z["x"], z["y"], [str(c) for c in z["classes"]]
        if not (x.dtype == np.uint8 and x.ndim == 4 and y.ndim == 1 and len(x) == len(y) and y.dtype.kind in "iu"):
            raise ValueError("arrays of another shape or type")
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), classes
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        import sys
        print(f"kd: warning: damaged image cache {cache} ({type(e).__name__}: {str(e)[:80]}); decoding the images "
              f"again and rebuilding it", file=sys.stderr)
        return None


def _folder_cache(d: Path, size: int | None) -> tuple[Path, int]:
    """(the .npz that caches folder `d` under $KD_CACHE, default ~/.cache/kd, keyed by path, names and
    mtimes; the number of files in `d`)."""
    files = sorted(str(p.relative_to(d)) + str(p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file())
    key = hashlib.sha256(("\n".join(files) + f"|{size}").encode()).hexdigest()[:16]
    cache = Path(os.environ.get("KD_CACHE") or Path.home() / ".cache" / "kd") / f"{d.parent.name}_{d.name}_{key}.npz"
    return cache, len(files)


def _cached_folder(d: Path, size: int | None, cache: Path):
    """Folder `d` decoded, from its cache when there is one; else decoded and cached."""
    if cache.is_file():
        hit = _read_cache(cache)
        if hit is not None:
            return hit
    x, y, classes = read_image_folder(d, size)
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.stem}.", suffix=".npz", dir=cache.parent)  # private to this process
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x.numpy(), y=y.numpy(), classes=np.array(classes))
        os.replace(tmp, cache)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        print(f"kd: warning: cannot write the cache {cache} ({e.strerror or e}); the next run decodes "
              f"{d} again", file=sys.stderr, flush=True)
    return x, y, classes


def image_folder(d: Path, name: str, size: int | None = 32, **kw) -> Dataset:
    """<d>/train/<class>/<img> and <d>/test/<class>/<img> (or val/), all images held in memory.
    Normalisation: mean/std of the training pixels unless given.

    The first read decodes the whole tree, whatever subset a run trains on, and says so in one line on
    stderr: one cache serves every subset, seed and full run, and a folder normalised by its training
    pixels needs every image anyway (the CIFAR-10 JPEG tree, 60,000 images: 12 s of CPU time, once;
    55 s of wall time on a loaded 2-core machine)."""
    if not d.is_dir():
        raise _missing(d, "expected <dir>/train/<class>/<image> and <dir>/test/<class>/<image>")
    test_dir = d / "test" if (d / "test").is_dir() else d / "val"
    caches = {split: _folder_cache(split, size) for split in (d / "train", test_dir)}
    new = [(split, n) for split, (cache, n) in caches.items() if not cache.is_file()]
    if new:
        print(f"kd: decoding the {sum(n for _, n in new)} files of {d} ({', '.join(s.name for s, _ in new)}) once, "
              f"into the cache {caches[new[0][0]][0].parent} (KD_CACHE); later runs read the cache",
              file=sys.stderr, flush=True)
    trx, tr_y, classes = _cached_folder(d / "train", size, caches[d / "train"][0])
    tex, te_y, test_classes = _cached_folder(test_dir, size, caches[test_dir][0])
    if classes != test_classes:
        raise KDError(f"{d}: train and test class folders differ")
    if "mean" not in kw:
        f = trx.float().div_(255)
        kw["mean"] = tuple(round(v, 4) for v in f.mean((0, 2, 3)).tolist())
        kw["std"] = tuple(round(v, 4) for v in f.std((0, 2, 3)).tolist())
    return Dataset(name, trx, tr_y, tex, te_y, len(classes), info={"classes": classes}, **kw)


@DATASETS.register("cifar10_jpeg", classes=10)
def cifar10_jpeg(root: Path) -> Dataset:
    """The JPEG copy of CIFAR-10 (image-folder layout) under <data root>/cifar10-jpeg, with the
    CIFAR-10 normalisation. Lossy: self-consistent, but not comparable with published CIFAR-10."""
    return image_folder(root / "cifar10-jpeg", "cifar10_jpeg",
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@DATASETS.register("digits", classes=10)
def digits(root: Path) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), shipped with scikit-learn.
    Fixed stratified split 1,437 train / 360 test (random_state 0); grey replicated to 3 channels;
    augmentation: 1-pixel padded crop, no flip."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = np.repeat((d.images * (255 / 16)).round().astype(np.uint8)[:, None], 3, axis=1)
    trx, tex, tr_y, te_y = train_test_split(x, d.target, test_size=360, stratify=d.target, random_state=0)
    (trx, tr_y), (tex, te_y) = _to_tensors(trx, tr_y), _to_tensors(tex, te_y)
    m, s = trx.float().div(255).mean().item(), trx.float().div(255).std().item()
    return Dataset("digits", trx, tr_y, tex, te_y, 10, (m,) * 3, (s,) * 3, crop_pad=1, flip=False)
