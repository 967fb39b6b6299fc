"""The classifier of the evaluation (the paper's Fig. 3): a small ResNet trained on a ranked
subset of the training split and scored by AUC on the test split.

Each subset trains to convergence: Adam on shuffled mini-batches, the validation AUC checked at
least once an epoch, stopping when it has not improved for `patience` checks and keeping the best
checkpoint (MedMNIST's own protocol selects by validation AUC too: on small subsets the validation
loss rises with overconfidence while the ranking still improves, and a loss criterion kept
near-untrained checkpoints); a cap of `max_epochs` epochs (within [min_steps, max_steps] steps)
bounds the run, so a 2% subset is not starved of updates and the full set sees many epochs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from enrich_ray.config import EvaluateConfig
from enrich_ray.embed.device import autocast


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for 28 or 64 px greyscale images: a stride-2 stem, one residual block per stage
    with the width doubling and the side halving from stage to stage, global average pooling and
    a linear head. At 64 px the stem adds a 2x2 max-pool, so both sizes reach the blocks at 14-16 px.
    """

    def __init__(self, n_classes: int, size: int, width: int = 16, stages: int = 3) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        stem: list[nn.Module] = [nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        if size > 32:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        blocks, c = [], width
        for i in range(stages):
            c_out = width * 2**i
            blocks.append(ResidualBlock(c, c_out, stride=1 if i == 0 else 2))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(y.mean(dim=(2, 3)))


@dataclass(frozen=True)
class TrainSettings:
    """How one classifier trains: the step cap (epochs, clamped to [min_steps, max_steps]), early
    stopping (a validation check every max(one epoch, check_every) steps, patience checks), batch,
    learning rate, width, device and precision."""

    max_epochs: int = EvaluateConfig.max_epochs  # the defaults live in one home, evaluate's settings
    min_steps: int = EvaluateConfig.min_steps
    max_steps: int = EvaluateConfig.max_steps
    check_every: int = EvaluateConfig.check_every
    patience: int = EvaluateConfig.patience
    batch_size: int = EvaluateConfig.batch_size
    lr: float = EvaluateConfig.lr
    width: int = EvaluateConfig.width
    stages: int = 3
    device: torch.device = torch.device("cpu")
    amp: bool = True

    def step_cap(self, n_images: int) -> int:
        """Steps allowed for a subset of n_images: max_epochs epochs, within [min_steps, max_steps]."""
        per_epoch = math.ceil(n_images / min(self.batch_size, n_images))
        return int(min(self.max_steps, max(self.min_steps, self.max_epochs * per_epoch)))


@dataclass
class TrainedClassifier:
    """A trained model (at its best validation check) and how its training went."""

    model: SmallResNet
    steps: int  # optimizer steps taken
    best_step: int  # the step of the kept checkpoint
    cap: int  # the steps allowed
    best_val_auc: float  # NaN without a validation split

    @property
    def stopped_early(self) -> bool:
        return self.steps < self.cap


def set_threads(threads: int) -> None:
    """Torch's CPU threads: `threads` when positive; 0 keeps torch's default (OMP_NUM_THREADS, else the cores)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images[:, None], dtype=np.float32)).to(device)


def train_classifier(images: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, settings: TrainSettings,
                     val: tuple[np.ndarray, np.ndarray] | None = None) -> TrainedClassifier:
    """Train a SmallResNet on (N, H, W) images in [0, 1] with integer labels: shuffled mini-batches
    (without replacement, epoch after epoch) up to settings.step_cap(N) Adam steps; with a
    validation split (images, labels), stop once its AUC has not improved for settings.patience
    checks and return the best checkpoint."""
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, side, side), got shape {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SmallResNet(n_classes, images.shape[1], settings.width, settings.stages).to(settings.device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    x_all = _as_batch(images, settings.device)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(settings.device)
    if val is not None and np.unique(val[1]).size < 2:
        raise ValueError(f"the validation split holds one class only ({np.unique(val[1]).tolist()}): its AUC is undefined")
    batch = min(settings.batch_size, len(images))
    cap = settings.step_cap(len(images))
    check_every = max(math.ceil(len(images) / batch), settings.check_every)
    order = rng.permutation(len(images))
    pos, best_auc, best_step, best_state, waited = 0, -math.inf, 0, None, 0
    model.train()
    step = 0
    while step < cap:
        if pos + batch > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = torch.from_numpy(order[pos : pos + batch]).to(settings.device)
        pos += batch
        with autocast(settings.device, settings.amp):
            logits = model(x_all[idx])
        loss = F.cross_entropy(logits.float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if val is not None and (step % check_every == 0 or step == cap):
            val_auc = auc(val[1], predict_proba(model, val[0], settings))
            model.train()
            if val_auc > best_auc:
                best_auc, best_step, best_state, waited = val_auc, step, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= settings.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = step
    return TrainedClassifier(model, step, best_step, cap, best_auc if val is not None else math.nan)


@torch.no_grad()
def predict_proba(model: SmallResNet, images: np.ndarray, settings: TrainSettings, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, n_classes) of images in [0, 1], in evaluation mode."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = _as_batch(images[start : start + batch_size], settings.device)
        with autocast(settings.device, settings.amp):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney statistic over n_pos * n_neg)."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    if not np.isfinite(s).all():
        raise ValueError("AUC scores contain NaN or infinite values")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(labels: np.ndarray, proba: np.ndarray) -> float:
    """Test AUC: binary AUC of the class-1 probability for 2 classes; the mean one-vs-rest AUC over
    the classes present in labels for more."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(proba)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"need (N, n_classes) probabilities for {y.size} labels, got shape {p.shape}")
    if p.shape[1] == 2:
        return binary_auc(y == 1, p[:, 1])
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(f"AUC needs at least two classes in the labels, got {present.tolist()}")
    return float(np.mean([binary_auc(y == c, p[:, c]) for c in present]))
