"""Datasets: readers for standard on-disk layouts, variants, and batch augmentation on the device.

Every dataset is loaded into memory as uint8 tensors (N, C, H, W) plus int64 labels. Training
augmentation runs on whole batches on the training device (no per-image Python):
  random crop of the zero-padded image (RepDistiller's RandomCrop(32, padding=4): the padding is
  black pixels, i.e. zero *before* normalisation), horizontal flip with p = 0.5 drawn per sample,
  then per-dataset normalisation. Evaluation normalises only.

The data root comes from `--data-root` or the KD_DATA_ROOT environment variable (default ./data).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kd.errors import KDError
from kd.registry import DATASETS


def data_root(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("KD_DATA_ROOT", "data"))


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor          # (N, C, H, W) uint8
    train_y: torch.Tensor          # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]        # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    crop_pad: int = 4
    flip: bool = True
    info: dict = field(default_factory=dict)   # variant facts recorded with every result

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def on_device(self, device: torch.device) -> "DeviceData":
        """The batch source the training loop uses (a streaming dataset returns its own)."""
        return DeviceData(self, device)


# --- variants ---------------------------------------------------------------------------------

_VARIANT = re.compile(r"^(noisy|imb|sub|test)([0-9.]+)$")


def split_name(name: str) -> tuple[str, list[str]]:
    """'cifar10-noisy0.2-sub1000' -> ('cifar10', ['noisy0.2', 'sub1000'])."""
    base, *variants = name.split("-")
    return base, variants


def symmetric_noise(y: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Symmetric label noise (Co-teaching's `noisify`, as NeurAI-Lab/NCT uses): each training label
    is flipped with probability `rate` to one of the other C-1 classes, uniformly."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    return torch.where(flip, (y + shift) % num_classes, y)


def imbalance_counts(n_per_class: int, num_classes: int, gamma: float) -> list[int]:
    """Class-imbalance profile (ASSUMED: the source does not define γ). Power law over the class
    index, n_c = n_max * ((c + 1) / C) ** (1 / γ): γ = ∞ is balanced, larger γ is milder, which is
    what the source's baseline trend requires (accuracy rises from γ = 0.2 to γ = 2). For C = 10,
    γ = 1 keeps 10%..100% of each class; γ = 0.2 keeps 0.001%..100% (at least 1 image)."""
    return [max(1, int(round(n_per_class * ((c + 1) / num_classes) ** (1.0 / gamma))))
            for c in range(num_classes)]


def apply_variant(ds: Dataset, variant: str, seed: int = 0) -> Dataset:
    """Deterministic in `seed`; the test set is never changed."""
    m = _VARIANT.match(variant)
    if not m:
        raise KDError(f"unknown dataset variant '{variant}'; valid: noisy<rate>, imb<gamma>, sub<n>, test<n>, "
                      f"e.g. cifar10-noisy0.2")
    kind = m.group(1)
    try:
        val = float(m.group(2))
    except ValueError:
        raise KDError(f"dataset variant '{variant}': '{m.group(2)}' is not a number") from None
    if kind in ("sub", "test") and (val != int(val) or val < 1):
        raise KDError(f"dataset variant '{variant}': the size must be a whole number >= 1")
    if kind == "imb" and not val > 0:
        raise KDError(f"dataset variant '{variant}': the imbalance gamma must be > 0")
    g = torch.Generator().manual_seed(seed)
    if kind == "noisy":
        if not 0 <= val < 1:
            raise KDError(f"noise rate must be in [0, 1), got {val}")
        y = symmetric_noise(ds.train_y, val, ds.num_classes, seed)
        info = {"noise": "symmetric", "noise_rate": val, "noise_seed": seed,
                "labels_changed": int((y != ds.train_y).sum())}
        return replace(ds, train_y=y, info={**ds.info, **info})
    if kind == "imb":
        n_max = int(torch.bincount(ds.train_y, minlength=ds.num_classes).min())
        counts = imbalance_counts(n_max, ds.num_classes, val)
        keep = []
        for c, n in enumerate(counts):
            idx = (ds.train_y == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        keep = torch.cat(keep).sort().values
        info = {"imbalance": "power", "gamma": val, "class_counts": counts, "imbalance_seed": seed}
        return replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep], info={**ds.info, **info})
    n = int(val)
    if kind == "test":  # a seeded subset of the test set, for short CPU runs; recorded in the result
        if n > len(ds.test_y):
            raise KDError(f"test subset of {n} asked, but {ds.name} has {len(ds.test_y)} test images")
        keep = torch.randperm(len(ds.test_y), generator=g)[:n].sort().values
        return replace(ds, test_x=ds.test_x[keep], test_y=ds.test_y[keep],
                       info={**ds.info, "test_subset": n, "test_subset_seed": seed})
    if n > ds.num_train:
        raise KDError(f"subset of {n} asked, but {ds.name} has {ds.num_train} training images")
    keep = torch.randperm(ds.num_train, generator=g)[:n].sort().values
    return replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep],
                   info={**ds.info, "subset": n, "subset_seed": seed})


KNOWN_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "svhn_extra": 10, "cifar10_jpeg": 10, "digits": 10,
                 "imagenet": 1000}


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Classes of a dataset, without reading it when the dataset is a standard one."""
    base = split_name(name)[0]
    return KNOWN_CLASSES.get(base) or load_dataset(name, root).num_classes


def load_dataset(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Load `name` (a registered dataset plus '-'-separated variants) from the data root."""
    base, variants = split_name(name)
    ds = DATASETS.get(base)(data_root(root))
    for v in variants:
        ds = apply_variant(ds, v, seed)
    ds.name = name
    return ds


# --- readers ----------------------------------------------------------------------------------

def _missing(what: Path, how: str) -> KDError:
    return KDError(f"dataset not found: {what} is missing; {how} (data root: set --data-root or KD_DATA_ROOT)")


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


@DATASETS.register("cifar10")
def cifar10(root: Path) -> Dataset:
    (trx, tr_y), (tex, te_y) = _cifar(root, "cifar-10-batches-py",
                                      ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]), "labels",
                                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    # Normalisation: CIFAR-10 per-channel mean and std of the training pixels.
    return Dataset("cifar10", trx, tr_y, tex, te_y, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
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


@DATASETS.register("svhn")
def svhn(root: Path) -> Dataset:
    """SVHN cropped digits, train split only (73,257); the 'svhn_extra' dataset adds the extra split."""
    (trx, tr_y), (tex, te_y) = _svhn_split(root, "train"), _svhn_split(root, "test")
    return Dataset("svhn", trx, tr_y, tex, te_y, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                   flip=False)  # flipping digits changes their meaning


@DATASETS.register("svhn_extra")
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


def _cached_folder(d: Path, size: int | None):
    """Decode once, cache as .npz under $KD_CACHE (default ~/.cache/kd) keyed by path, names and mtimes."""
    files = sorted(str(p.relative_to(d)) + str(p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file())
    key = hashlib.sha256(("\n".join(files) + f"|{size}").encode()).hexdigest()[:16]
    cache = Path(os.environ.get("KD_CACHE", Path.home() / ".cache" / "kd")) / f"{d.parent.name}_{d.name}_{key}.npz"
    if cache.is_file():
        z = np.load(cache)
        return torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), list(z["classes"])
    x, y, classes = read_image_folder(d, size)
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.stem}.", suffix=".npz", dir=cache.parent)  # private to this process
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x.numpy(), y=y.numpy(), classes=np.array(classes))
        os.replace(tmp, cache)
    except OSError:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        # unwritable cache: decode again next time
    return x, y, classes


def image_folder(d: Path, name: str, size: int | None = 32, **kw) -> Dataset:
    """<d>/train/<class>/<img> and <d>/test/<class>/<img> (or val/), all images held in memory.
    Normalisation: mean/std of the training pixels unless given."""
    if not d.is_dir():
        raise _missing(d, "expected <dir>/train/<class>/<image> and <dir>/test/<class>/<image>")
    test_dir = d / "test" if (d / "test").is_dir() else d / "val"
    trx, tr_y, classes = _cached_folder(d / "train", size)
    tex, te_y, test_classes = _cached_folder(test_dir, size)
    if classes != test_classes:
        raise KDError(f"{d}: train and test class folders differ")
    if "mean" not in kw:
        f = trx.float().div_(255)
        kw["mean"] = tuple(round(v, 4) for v in f.mean((0, 2, 3)).tolist())
        kw["std"] = tuple(round(v, 4) for v in f.std((0, 2, 3)).tolist())
    return Dataset(name, trx, tr_y, tex, te_y, len(classes), info={"classes": classes}, **kw)


@DATASETS.register("cifar10_jpeg")
def cifar10_jpeg(root: Path) -> Dataset:
    """The JPEG copy of CIFAR-10 (image-folder layout) under <data root>/cifar10-jpeg, with the
    CIFAR-10 normalisation. Lossy: self-consistent, but not comparable with published CIFAR-10."""
    return image_folder(root / "cifar10-jpeg", "cifar10_jpeg",
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@DATASETS.register("digits")
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


# --- batches on the device ----------------------------------------------------------------------

class DeviceData:
    """The dataset moved once to the device, with batch iterators that augment on the device."""

    def __init__(self, ds: Dataset, device: torch.device):
        self.ds = ds
        self.device = device
        self.train_x = ds.train_x.to(device)
        self.train_y = ds.train_y.to(device)
        self.test_x = ds.test_x.to(device)
        self.test_y = ds.test_y.to(device)
        self.mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)

    def probe(self, n: int) -> torch.Tensor:
        """A few normalised training images, to learn feature shapes."""
        return self.normalise(self.train_x[:n])

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def augment(self, x_uint8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero-padded random crop + random horizontal flip on a (B, C, H, W) batch."""
        x = x_uint8.float().div_(255)
        B, C, H, W = x.shape
        p = self.ds.crop_pad
        if p:
            x = torch.nn.functional.pad(x, (p, p, p, p))                  # black border, as PIL's pad
            oy = torch.randint(0, 2 * p + 1, (B, 1), device=x.device, generator=gen)
            ox = torch.randint(0, 2 * p + 1, (B, 1), device=x.device, generator=gen)
            rows = (oy + torch.arange(H, device=x.device)).view(B, 1, H, 1)
            cols = (ox + torch.arange(W, device=x.device)).view(B, 1, 1, W)
            x = x.gather(2, rows.expand(B, C, H, W + 2 * p)).gather(3, cols.expand(B, C, H, W))
        if self.ds.flip:
            flip = torch.rand(B, device=x.device, generator=gen) < 0.5
            x = torch.where(flip.view(B, 1, 1, 1), x.flip(3), x)
        return (x - self.mean) / self.std

    def train_batches(self, batch_size: int, gen: torch.Generator):
        """Shuffled batches of (index, images, labels); the last, smaller batch is kept
        (drop_last=False, as RepDistiller). In a multi-process run (kd.dist) `batch_size` is the
        global batch: every rank draws the same permutation and augments the whole global batch
        (the generator advances as in one process), then keeps its slice."""
        from kd.dist import shard, world
        n, size = len(self.train_y), world().size
        order = torch.randperm(n, device=self.device, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x = self.augment(self.train_x[idx], gen)
            if size > 1:
                s = shard(len(idx))
                idx, x = idx[s], x[s]
            yield idx, x, self.train_y[idx]

    def test_batches(self, batch_size: int = 1000):
        for i in range(0, len(self.test_y), batch_size):
            yield self.normalise(self.test_x[i:i + batch_size]), self.test_y[i:i + batch_size]
import kd.imagenet  # noqa: E402,F401  (registers the streaming ImageNet dataset)
