"""ImageNet-1k (ILSVRC-2012) as a streaming image folder: dataset 'imagenet'.

Layout: <data root>/imagenet/train/<class>/<image> and <data root>/imagenet/val/<class>/<image>
(class folders, e.g. the WordNet ids n01440764 ..., sorted by name = label order; the 50,000
validation images sorted into their class folders, as torchvision's ImageFolder / the PyTorch
ImageNet example expect). Files are listed once with torchvision's ImageFolder; images are decoded
by DataLoader workers when a batch needs them, never held in memory.

Transforms (the standard ImageNet protocol of CRD, SRRL, DKD, torchdistill; protocols.md §1b, §3b, §5c):
  train: RandomResizedCrop(S) (scale (0.08, 1), ratio (3/4, 4/3), bilinear) + RandomHorizontalFlip
  eval:  Resize(R) (shorter side, bilinear, antialias) + CenterCrop(S)
  both:  ToTensor + Normalize(ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
S = KD_IMAGENET_SIZE (default 224), R = int(S / 0.875) (256 at 224; timm's crop_pct 0.875), both
recorded in the dataset info of every result. The workers return uint8 crops; the ToTensor /
Normalize arithmetic ((x / 255 - mean) / std, in float32) runs on the training device, which moves
4x fewer bytes through shared memory and PCIe than float images.

Dataset semantics (kd.data.Dataset subclass, so kd.data's variants apply unchanged): train_x /
test_x hold int64 *file ids* into the sorted file lists, not pixels; train_y / test_y the labels
(a noisy-label variant changes train_y, and the batches carry train_y). `index` in a training
batch is the position in the (possibly subset) training set, 0..num_train-1, as CRD needs.

Determinism: each train_batches() call draws one 62-bit seed from the given generator; the
shuffled order comes from that seed, and every sample's augmentation from torch's RNG seeded with
(seed + position), inside torch.random.fork_rng. Batches therefore depend only on the generator
state, not on the number of workers (KD_WORKERS, default min(8, CPU count); 0 decodes in the
main process) or on their scheduling.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kd.data.core import Dataset, _missing
from kd.errors import KDError
from kd.registry import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = ("expected <data root>/imagenet/train/<class>/<image> and <data root>/imagenet/val/<class>/<image> "
          "(the validation images sorted into class folders, e.g. with the PyTorch ImageNet example's valprep.sh)")


def image_size() -> int:
    try:
        size = int(os.environ.get("KD_IMAGENET_SIZE", "224"))
    except ValueError:
        raise KDError(f"KD_IMAGENET_SIZE must be an integer, got {os.environ['KD_IMAGENET_SIZE']!r}") from None
    if size < 8:
        raise KDError(f"KD_IMAGENET_SIZE must be at least 8, got {size}")
    return size


def num_workers() -> int:
    raw = os.environ.get("KD_WORKERS")
    if raw is None:
        return min(8, os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        raise KDError(f"KD_WORKERS must be an integer, got {raw!r}") from None
    return max(0, n)


def _list_split(d: Path) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """(relative paths as bytes, labels, classes) of one split, via torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder
    try:
        folder = ImageFolder(str(d))
    except (FileNotFoundError, RuntimeError) as e:
        raise _missing(d, f"{e}; {LAYOUT}") from None
    cut = len(str(d)) + 1
    files = np.array([p[cut:].encode() for p, _ in folder.samples], dtype=np.bytes_)
    return files, torch.tensor(folder.targets, dtype=torch.long), list(folder.classes)


@dataclass
class FolderStream(Dataset):
    """A kd.data.Dataset whose images stay on disk (train_x / test_x are file ids)."""

    train_dir: str = ""
    test_dir: str = ""
    train_files: np.ndarray | None = None     # (N_files,) bytes, path relative to train_dir
    test_files: np.ndarray | None = None
    size: int = 224
    resize: int = 256

    def on_device(self, device: torch.device) -> "StreamingData":
        return StreamingData(self, device)


def image_folder_stream(d: Path, name: str, size: int | None = None) -> FolderStream:
    """<d>/train/<class>/<image> and <d>/val/<class>/<image> as a FolderStream (ImageNet normalisation)."""
    if not d.is_dir():
        raise _missing(d, LAYOUT)
    for split in ("train", "val"):
        if not (d / split).is_dir():
            raise _missing(d / split, LAYOUT)
    size = size or image_size()
    resize = int(size / 0.875)
    train_files, train_y, classes = _list_split(d / "train")
    test_files, test_y, test_classes = _list_split(d / "val")
    if classes != test_classes:
        only = sorted(set(classes) ^ set(test_classes))[:5]
        raise KDError(f"{d}: train and val class folders differ (e.g. {', '.join(only)}); {LAYOUT}")
    info = {"streaming": True, "image_size": size, "eval_resize": resize, "num_classes": len(classes),
            "classes_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16],
            "train_files": len(train_files), "val_files": len(test_files)}
    return FolderStream(name, torch.arange(len(train_files)), train_y, torch.arange(len(test_files)), test_y,
                        len(classes), IMAGENET_MEAN, IMAGENET_STD, crop_pad=0, flip=True, info=info,
                        train_dir=str(d / "train"), test_dir=str(d / "val"), train_files=train_files,
                        test_files=test_files, size=size, resize=resize)


@DATASETS.register("imagenet", classes=1000)
def imagenet(root: Path) -> FolderStream:
    """ILSVRC-2012 under <data root>/imagenet (1000 classes, 1,281,167 train / 50,000 val images)."""
    return image_folder_stream(Path(root) / "imagenet", "imagenet")


# --- loading ------------------------------------------------------------------------------------

class _Files(torch.utils.data.Dataset):
    """Item (position, seed) -> (position, uint8 (3, S, S) crop). seed None: eval transform."""

    def __init__(self, root: str, files: np.ndarray, ids: np.ndarray, size: int, resize: int):
        from torchvision import transforms as T
        self.root, self.files, self.ids = root, files, ids
        self.train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
        self.eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, item):
        pos, seed = item
        from PIL import Image
        path = os.path.join(self.root, self.files[self.ids[pos]].decode())
        with Image.open(path) as im:
            im = im.convert("RGB")
            if seed is None:
                return pos, self.eval_tf(im)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return pos, self.train_tf(im)


class _Order(torch.utils.data.Sampler):
    """The items (position, seed + position) of the next pass (seed None: eval), set before each
    iteration (persistent workers keep one loader); generated lazily, not held as a list."""

    def __init__(self):
        self.positions, self.seed = np.zeros(0, dtype=np.int64), None

    def __iter__(self):
        for p in map(int, self.positions):
            yield p, (None if self.seed is None else self.seed + p)

    def __len__(self):
        return len(self.positions)


class StreamingData:
    """The DeviceData interface (kd.data.DeviceData) over a FolderStream, with a DataLoader."""

    def __init__(self, ds: FolderStream, device: torch.device, workers: int | None = None):
        self.ds, self.device = ds, torch.device(device)
        self.workers = num_workers() if workers is None else workers
        self.train_y = ds.train_y.to(self.device)
        self.test_y = ds.test_y.to(self.device)
        self.mean = torch.tensor(ds.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(ds.std, device=self.device).view(1, -1, 1, 1)
        self._train = _Files(ds.train_dir, ds.train_files, ds.train_x.numpy(), ds.size, ds.resize)
        self._test = _Files(ds.test_dir, ds.test_files, ds.test_x.numpy(), ds.size, ds.resize)
        self._loaders: dict = {}

    @property
    def num_train(self) -> int:
        return len(self.ds.train_y)

    @property
    def num_test(self) -> int:
        return len(self.ds.test_y)

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def _loader(self, split: str, batch_size: int):
        key = (split, batch_size)
        if key not in self._loaders:
            order = _Order()
            kw = {"num_workers": self.workers, "pin_memory": self.device.type == "cuda"}
            if self.workers:
                kw.update(persistent_workers=True, prefetch_factor=4)
            ds = self._train if split == "train" else self._test
            self._loaders[key] = (order, torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order,
                                                                     drop_last=False, **kw))
        return self._loaders[key]

    def _stream(self, split: str, batch_size: int, positions: np.ndarray, seed: int | None):
        order, loader = self._loader(split, batch_size)
        order.positions, order.seed = positions, seed
        for pos, x in loader:
            pos = pos.to(self.device, non_blocking=True)
            yield pos, self.normalise(x.to(self.device, non_blocking=True))

    def probe(self, n: int) -> torch.Tensor:
        """The first n training images, eval transform, normalised (for feature shapes)."""
        return self.normalise(torch.stack([self._train[(i, None)][1] for i in range(min(n, self.num_train))])
                              .to(self.device))

    def train_batches(self, batch_size: int, gen: torch.Generator, shard=None):
        """Shuffled batches of (index, images, labels), augmented; the last, smaller batch is kept.
        Several processes (kd.engine.dist) hand in `shard` (a global batch's size -> this rank's
        slice): `batch_size` is the global batch and this rank decodes only its slice of each (augmentation
        is seeded per sample, so the slices are exactly the single-process images)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        order = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(seed)).numpy()
        sizes = []
        if shard is not None:
            chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            sizes = [len(c) for c in chunks]
            order = np.concatenate([c[shard(len(c))] for c in chunks])
            batch_size = len(chunks[0][shard(len(chunks[0]))]) if chunks else batch_size
        for k, (idx, x) in enumerate(self._stream("train", batch_size, order, seed)):
            if shard is not None:
                shard(sizes[k])          # this batch's gradient weight (World.share)
            yield idx, x, self.train_y[idx]

    def test_batches(self, batch_size: int = 250):
        for idx, x in self._stream("test", batch_size, np.arange(self.num_test), None):
            yield x, self.test_y[idx]
