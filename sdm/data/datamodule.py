"""The LightningDataModule: a fixed split by seed, augmentations, resumable shuffling."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from sdm.core.errors import DataError
from sdm.core.seeding import stable_seed
from sdm.core.stopping import outlive_stop_signals_of_others
from sdm.data.mixing import MixedPairs, epoch_items, epoch_size, extra_ratio, extra_source_cfg
from sdm.data.prepare import PreparedData, decode_instance, decode_row, prepare_data, split_indices
from sdm.data.rows import parse_size
from sdm.data.streaming import StreamingPairs
from sdm.data.transforms import A, to_item, train_transform


def order_seed(data: Any) -> int:
    """Seed of the training rows' order and augmentations: `data.order_seed` where set (a
    segmenter's seed sets it, so its seeds differ in data order as well as in weights), else
    `data.split_seed`, so the split and the order of a run stay one setting."""
    order = data.get("order_seed")
    return int(data.split_seed) if order is None else int(order)


class ResumableShuffleSampler(Sampler[tuple[int, int]]):
    """A seeded permutation per epoch, sharded by rank, yielding (index, augmentation seed).

    `resume(epoch, consumed)` makes the next pass over that epoch skip what this rank has
    already trained on, so a resumed run continues the data order instead of restarting it.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1,
                 mix: tuple[int, int, float] | None = None) -> None:
        # mix = (real rows, synthetic rows, synthetic share): each epoch draws its items by sdm.data.mixing
        self.epoch_size = num_items if mix is None else epoch_size(*mix)
        if self.epoch_size < world_size:
            raise DataError(f"{self.epoch_size} training rows cannot be shared by {world_size} ranks")
        self.num_items, self.seed, self.rank, self.world_size, self.mix = num_items, seed, rank, world_size, mix
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        self._skip = (epoch, consumed)

    def __len__(self) -> int:
        return self.epoch_size // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        items = torch.randperm(self.num_items, generator=generator) if self.mix is None \
            else epoch_items(*self.mix, generator)
        order = items[: len(self) * self.world_size]
        positions = range(self.rank, len(order), self.world_size)
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
            self._skip = None
        for position in list(positions)[start:]:
            # augmentation seed per sample: independent of worker count, so resume is exact
            yield int(order[position]), stable_seed(self.seed, self.epoch, position) % 2**32


class PairDataset(Dataset):
    """Rows of a prepared cache as batch items, augmented by a per-sample seeded transform."""

    def __init__(self, prepared: PreparedData, indices: np.ndarray, transform: A.Compose | None,
                 instances: bool = False) -> None:
        self.prepared, self.indices, self.transform = prepared, indices, transform
        self.instances = instances  # items carry instance ids: the cache's, or the label's own where it has none
        self._rows = None  # opened lazily, so each DataLoader worker maps the file itself

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self._rows is None:
            self._rows = self.prepared.open()
        row = self._rows[int(self.indices[index])]
        image, label = decode_row(row, self.prepared.size)
        instance = decode_instance(row, self.prepared.size) if self.instances else None
        if self.instances and instance is None:  # synthetic rows beside real ones with instance maps
            instance = label.astype(np.int32)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=label, **({"instance": instance} if instance is not None else {}))
            image, label, instance = out["image"], out["mask"], out.get("instance")
        return to_item(image, label, instance)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}


class IndexedRows(Dataset):
    """Some rows of a dataset, each item with its `index` in the whole dataset."""

    def __init__(self, dataset: Dataset, positions: range) -> None:
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        position = self.positions[i]
        return {**self.dataset[position], "index": torch.tensor(position)}


def seed_worker(worker_id: int) -> None:
    """Give every DataLoader worker its own random streams (albumentations included), and let
    it outlive the stop signals that SLURM sends every process of a job (sdm.core.stopping)."""
    outlive_stop_signals_of_others()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None:
        transform.set_random_seed(seed)


class SidewalkDataModule(L.LightningDataModule):
    """Prepares the configured source once, then serves train/val batches of that cache."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.prepared: PreparedData | None = None
        self.train_set: PairDataset | None = None
        self.val_set: PairDataset | None = None
        self.sampler: ResumableShuffleSampler | None = None
        self._resume_state: dict[str, int] | None = None
        self.mix: tuple[int, int, float] | None = None  # (real, synthetic, share) with data.extra

    @property
    def streaming(self) -> bool:
        return bool(self.cfg.get("streaming", False))

    def prepare_data(self) -> None:
        if not self.streaming:
            prepare_data(self.cfg)
            if self.cfg.get("extra"):
                prepare_data(extra_source_cfg(self.cfg))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        augment = self.cfg.get("augment") or {}
        if self.streaming:
            size = parse_size(self.cfg.size)
            transform = train_transform(size, augment.get("scale", (1.0, 1.0)), augment.get("hflip", 0.0))
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.train_set = StreamingPairs(self.cfg, "train", rank, world, transform)
            self.val_set = StreamingPairs(self.cfg, "val", rank, world, None)
            return
        self.prepared = prepare_data(self.cfg, show_progress=False)
        train_idx, val_idx = split_indices(
            len(self.prepared), float(self.cfg.val_fraction), int(self.cfg.split_seed)
        )
        transform = train_transform(self.prepared.size, augment.get("scale", (1.0, 1.0)), augment.get("hflip", 0.0))
        instances = bool(self.prepared.info.get("instances"))
        self.train_set = PairDataset(self.prepared, train_idx, transform, instances)
        self.val_set = PairDataset(self.prepared, val_idx, None, instances)
        if self.cfg.get("extra"):  # real + synthetic: validation stays real
            ratio = extra_ratio(self.cfg)
            synthetic = prepare_data(extra_source_cfg(self.cfg), show_progress=False)
            extra = PairDataset(synthetic, np.arange(len(synthetic)), transform, instances)
            self.mix = (len(self.train_set), len(extra), ratio)
            self.train_set = MixedPairs(self.train_set, extra)

    def _loader(self, dataset: Dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        # a stream of one shard cannot feed several workers: datasets would idle all but one
        workers = 0 if self.streaming else int(self.cfg.num_workers)
        return DataLoader(
            dataset,
            batch_size=int(self.cfg.batch_size),
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=bool(self.cfg.pin_memory) and torch.cuda.is_available(),
            drop_last=drop_last,
            worker_init_fn=seed_worker,
            persistent_workers=workers > 0,
        )

    @property
    def order_seed(self) -> int:
        return order_seed(self.cfg)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        if self.streaming:
            return self._loader(self.train_set, None, drop_last=True)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        per_epoch = len(self.train_set) if self.mix is None else epoch_size(*self.mix)
        if per_epoch // world < int(self.cfg.batch_size):
            raise DataError(
                f"{per_epoch} training rows over {world} rank(s) do not fill one batch of "
                f"{self.cfg.batch_size}; lower data.batch_size or add data"
            )
        self.sampler = ResumableShuffleSampler(len(self.train_set), self.order_seed, rank, world, self.mix)
        # Workers make the DataLoader draw from the sampler as soon as it is iterated, which on a
        # resume comes before Lightning's set_epoch: the sampler must start in the right epoch.
        self.sampler.set_epoch(self.trainer.current_epoch if self.trainer else 0)
        if self._resume_state is not None:
            self.sampler.set_epoch(self._resume_state["epoch"])
            self.sampler.resume(self._resume_state["epoch"], self._resume_state["consumed"])
            self._resume_state = None
        return self._loader(self.train_set, self.sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """This rank's share of the validation rows (every world-th), so GPUs split the work;
        the module averages the losses over ranks (sync_dist). Each row carries its index in
        the whole set: its noise is drawn from it, so the numbers do not depend on the GPU count."""
        assert self.val_set is not None, "call setup() first"
        if self.streaming:
            return self._loader(self.val_set, None, drop_last=False)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if world > 1 and len(self.val_set) >= world:
            return self._loader(IndexedRows(self.val_set, range(rank, len(self.val_set), world)), None, False)
        return self._loader(IndexedRows(self.val_set, range(len(self.val_set))), None, drop_last=False)

    def first_val_rows(self, count: int) -> dict[str, torch.Tensor] | None:
        """The first `count` validation rows as a batch (the sample grid's masks, the same on any
        number of GPUs); None for a streamed set."""
        if self.val_set is None or self.streaming or len(self.val_set) == 0:
            return None
        return default_collate([self.val_set[i] for i in range(min(count, len(self.val_set)))])

    def state_dict(self) -> dict[str, int]:
        """Where the training data stream stands, saved in every checkpoint."""
        if self.trainer is None or self.streaming:
            return {}
        loop = self.trainer.fit_loop.epoch_loop
        batches = loop.batch_progress.current.ready
        epoch = self.trainer.current_epoch
        if self.sampler is not None and batches >= len(self.sampler) // int(self.cfg.batch_size):
            # saved at the last batch of an epoch: Lightning resumes in the next one
            return {"epoch": epoch + 1, "consumed": 0}
        return {"epoch": epoch, "consumed": batches * int(self.cfg.batch_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_state = dict(state) if state else None
