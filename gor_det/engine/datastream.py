"""The training data stream across resume: a resumed run draws the batches the uninterrupted run draws.

Ultralytics resumes model, optimizer and EMA, but its trainer re-seeds everything at start (``init_seeds``) and builds
a fresh loader whose sampler generator starts from the same seed, so a run resumed at epoch k replays epoch 0's image
order and augmentations. What decides an epoch's batches, in the main process:

* the sampler's ``torch.Generator``. Each epoch is one ``RandomSampler`` pass: a ``randperm`` drawn at the epoch's
  first batch, and the (empty) remainder permutation drawn when the pass ends, i.e. at the next epoch's first batch.
  The loader draws one more number from the same generator whenever it creates its iterator: at the first epoch, and
  again when Ultralytics closes mosaic for the last ``close_mosaic`` epochs (dropping the pass it was in);
* the Python, NumPy and torch global random states (augmentations, mosaic partners, multi-scale sizes);
* the dataset's mosaic buffer (``dataset.buffer``: the recently loaded images mosaic picks its partners from).

:func:`capture` records these at each checkpoint (end of epoch, after validation: nothing draws from them between
there and the next epoch's first batch) and :func:`restore` puts them back at the resumed epoch's start, drawing the
remainder permutation the uninterrupted pass would draw. The resumed loader creates its iterator at that epoch, where
the uninterrupted one (unless it closed mosaic there) did not; that draw is taken from a copy of the generator, so the
sampler's generator is exactly where the uninterrupted run had it (``tests/test_engine_trainer.py`` compares the
batches of an uninterrupted and a resumed run).

Exact with ``workers=0`` (what Ultralytics uses on CPU). With dataloader workers it is not: the workers prefetch the
next epoch's indices before the checkpoint is written, and augment inside their own processes, whose random states
and mosaic buffers are not recoverable; the resumed run then goes on with a permutation the run has not used (not the
one the uninterrupted run would have drawn) instead of replaying epoch 1's. DDP's ``DistributedSampler`` orders by
``seed + epoch`` and is reproduced as it is. albumentations, when installed, draws from its own generator, which is
not restored.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

ATTR = "gor_data_stream"  # attribute of the checkpoint's model (the EMA) that carries the state; plain types only


def _generator(loader) -> torch.Generator | None:
    return getattr(getattr(loader, "sampler", None), "generator", None)


def capture(trainer) -> dict[str, Any]:
    """The data-stream state of ``trainer`` now (``epoch`` = the epoch just finished, 0-based)."""
    loader = getattr(trainer, "train_loader", None)
    gen = _generator(loader)
    dataset = getattr(loader, "dataset", None)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "epoch": int(trainer.epoch),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "sampler": gen.get_state().clone() if gen is not None else None,
        "buffer": list(getattr(dataset, "buffer", None) or []) if isinstance(getattr(dataset, "buffer", None), list)
        else None,
        "workers": int(getattr(loader, "num_workers", 0) or 0),
    }


def of_checkpoint(ckpt: dict | None) -> dict | None:
    """The state a checkpoint carries (None for one written without it, e.g. by stock Ultralytics)."""
    ckpt = ckpt or {}
    model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    state = getattr(model, ATTR, None)
    return state if isinstance(state, dict) else None


def _mosaic_closes_at(trainer, epoch: int) -> bool:
    """Ultralytics closes mosaic, and so creates a new loader iterator, at the epoch ``epochs - close_mosaic``."""
    cm = int(trainer.args.close_mosaic or 0)
    return bool(cm) and epoch == trainer.epochs - cm


def restore(trainer, state: dict) -> None:
    """Put ``state`` (from :func:`capture` at the end of epoch ``state['epoch']``) back, at the start of the next epoch
    of a resumed run, before its first batch is drawn."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader = trainer.train_loader
    gen = _generator(loader)
    if gen is not None and state.get("sampler") is not None:
        gen.set_state(state["sampler"])
        if not _mosaic_closes_at(trainer, trainer.epoch):
            # the uninterrupted loader goes on with the pass it is in: at its end RandomSampler draws the (empty)
            # remainder permutation, then the next pass's; the resumed loader starts a fresh pass
            sampler = loader.sampler
            if isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement:
                torch.randperm(len(sampler.data_source), generator=gen)
            if getattr(loader, "generator", None) is gen:
                # the iterator this epoch creates draws its worker seed from a copy: the sampler's generator stays
                copy = torch.Generator()
                copy.set_state(gen.get_state())
                loader.generator = copy
                trainer.gor_stream_generator = gen  # handed back at the first batch (release_generator)
        # else the uninterrupted run closed mosaic here: it dropped its pass and created a new iterator, as this one does
    dataset = loader.dataset
    buffer = state.get("buffer")
    if buffer and isinstance(getattr(dataset, "buffer", None), list) and not loader.num_workers:
        dataset.buffer.clear()
        for i in buffer:  # loading appends each index in order: the buffer and its cached images, as they were
            dataset.load_image(i)


def restore_on_resume(trainer) -> None:
    """Callback, on every epoch start: at the first epoch of a resumed run, :func:`restore` the checkpoint's state."""
    state = getattr(trainer, "gor_resume_stream", None)
    if state is not None:
        trainer.gor_resume_stream = None
        if state["epoch"] + 1 == trainer.epoch:
            restore(trainer, state)


def release_generator(trainer) -> None:
    """At a batch start: give the loader its own generator back once the iterator exists (later iterator
    creations, e.g. when mosaic closes, draw from it as in the uninterrupted run)."""
    gen = getattr(trainer, "gor_stream_generator", None)
    if gen is not None:
        trainer.train_loader.generator = gen
        trainer.gor_stream_generator = None
