"""Data order that can be saved and resumed, and that does not depend on the number of processes.

Each epoch is one permutation of the dataset drawn from ``(seed, epoch)``; it is cut into global
batches of ``batch_size``, and rank ``r`` of ``w`` takes the ``r``-th of ``w`` equal slices of each
global batch. So a 2-process run sees exactly the images a 1-process run sees, split in two, and
the position ``(epoch, batches already taken)`` is all that is needed to continue after a resume --
on any number of processes that divides the global batch (see ``meer.training.loop``).

The remainder rule: an epoch of ``N`` samples and global batch ``B`` has ``N // B`` steps, and its
``N // B * B`` samples are each seen exactly once, by exactly one rank; the ``N % B`` samples at the
end of that epoch's permutation are dropped for that epoch -- never padded or repeated, so batch
shapes are constant and no sample counts twice. The next epoch's fresh permutation drops others.
``B`` must be divisible by the number of processes (one-line error otherwise), so every rank takes
``B / w`` samples per step and all ranks run the same number of steps.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from meer.utils.errors import MeerError


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise MeerError(f"data.batch_size {batch_size} must be divisible by the number of processes {world_size}")
        if num_samples < batch_size:
            raise MeerError(f"the training split has {num_samples} images, fewer than one batch of {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # batches of this epoch already consumed (set on resume)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch = int(epoch)
        self.start = int(start)

    def global_batch(self, epoch: int, index: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        return perm[index * self.batch_size:(index + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        per_rank = self.batch_size // self.world_size
        for b in range(self.start, self.batches_per_epoch):
            batch = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


class DataStream:
    """Endless iteration over a DataLoader built on a :class:`ResumableBatchSampler`, counting the
    position so that it can be saved (``state_dict``) and restored (``load_state_dict``)."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: ResumableBatchSampler):
        self.loader = loader
        self.sampler = sampler
        self.epoch = 0
        self.position = 0
        self._it: Iterator | None = None

    def next(self) -> dict:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.position)
                dataset = self.loader.dataset
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.position = 0
                continue
            self.position += 1
            return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._it = None
