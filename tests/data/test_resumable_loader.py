import itertools
import random

import numpy as np
import pytest
import torch

from lite_detr.data import DatasetError, ResumableTrainLoader


def _dataset(n=10):
    # landscape and portrait images, for the aspect-ratio buckets
    return [{"idx": i, "width": 40 if i % 3 else 20, "height": 30} for i in range(n)]


def _mapper(d):
    # augmentation draws from the three global RNGs, as detectron2's transforms do
    return {**d, "aug": (random.random(), float(np.random.rand()), float(torch.rand(())))}


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_state_continues_the_stream_exactly(num_workers):
    make = lambda: ResumableTrainLoader(  # noqa: E731
        _dataset(), _mapper, 3, seed=7, num_workers=num_workers
    )
    want = _take(make(), 9)
    waiting = 0
    for stop in range(1, 9) if num_workers == 0 else (3, 5, 7):
        first = make()
        it = iter(first)
        got = [next(it) for _ in range(stop)]
        state = first.state_dict()
        waiting += sum(map(len, state["pending"]))  # images in a bucket must be replayed
        second = make()
        second.load_state_dict(state)
        assert got + _take(second, 9 - stop) == want, stop
    assert waiting > 0
    # 27 images of three 10-image epochs: bucketing delays some, none is lost
    seen = [d["idx"] for batch in want for d in batch]
    assert all(seen.count(i) in (2, 3) for i in range(10))


def test_same_stream_with_any_number_of_workers_and_global_rng_untouched():
    np.random.seed(0)
    before = np.random.get_state()[1].copy(), torch.get_rng_state()
    a = _take(ResumableTrainLoader(_dataset(), _mapper, 2, seed=3, num_workers=0), 6)
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert torch.equal(torch.get_rng_state(), before[1])
    b = _take(ResumableTrainLoader(_dataset(), _mapper, 2, seed=3, num_workers=2), 6)
    assert a == b
    c = _take(ResumableTrainLoader(_dataset(), _mapper, 2, seed=4, num_workers=0), 6)
    assert a != c


def test_first_epoch_is_a_permutation_without_grouping():
    loader = ResumableTrainLoader(_dataset(), None, 2, seed=1, aspect_ratio_grouping=False)
    seen = [d["idx"] for batch in _take(loader, 5) for d in batch]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_bad_batch_size():
    with pytest.raises(ValueError, match="total_batch_size=0"):
        ResumableTrainLoader(_dataset(), None, 0, seed=1)


def _report_through_excepthook(d):
    import sys

    for error in (BrokenPipeError(32, "Broken pipe"), ValueError("a real worker error")):
        sys.excepthook(type(error), error, None)
    return d


def test_worker_does_not_print_a_broken_pipe_when_the_main_process_leaves(capfd):
    # the fd-sharing thread of a worker reports through sys.excepthook; after Ctrl-C the main
    # process is gone mid-transfer and its BrokenPipeError is noise, any other error is not
    _take(ResumableTrainLoader(_dataset(2), _report_through_excepthook, 1, num_workers=1), 1)
    err = capfd.readouterr().err
    assert "a real worker error" in err
    assert "BrokenPipeError" not in err


@pytest.mark.parametrize(
    "exc,shown",
    [
        (BrokenPipeError, False),
        (ConnectionResetError, False),
        (EOFError, False),
        (ValueError, True),
    ],
)
def test_worker_hides_only_the_transfers_of_a_departed_main_process(exc, shown):
    """A loader worker's fd-sharing thread reports failures through sys.excepthook: the errors of
    a main process that left mid-transfer (Ctrl-C) are not shown, every other error is."""
    from lite_detr.data.resumable_loader import _QuietWhenConsumerLeaves

    seen = []
    hook = _QuietWhenConsumerLeaves(lambda *args: seen.append(args[0]))
    hook(exc, exc(), None)
    assert seen == ([exc] if shown else [])


def _unreadable(bad):
    def mapper(d):
        if d["idx"] in bad:
            raise OSError(f"Cannot read image {d['file_name']!r}") from FileNotFoundError(
                f"No such file: {d['file_name']!r}"
            )
        return d

    return mapper


def test_unreadable_image_is_skipped_and_counted_or_stops_with_its_name(caplog):
    data = [{**d, "file_name": f"img{d['idx']}.png"} for d in _dataset()]
    skipping = ResumableTrainLoader(data, _unreadable({2, 5}), 2, seed=1, skip_bad_images=True)
    seen = [d["idx"] for batch in _take(skipping, 10) for d in batch]
    assert 2 not in seen and 5 not in seen and len(seen) == 20
    assert skipping.skipped_images >= 2 and skipping.state_dict()["skipped_images"] >= 2
    warnings = [r.getMessage() for r in caplog.records if "Skipped unreadable" in r.getMessage()]
    assert len(warnings) == skipping.skipped_images
    assert "'img2.png' (FileNotFoundError: No such file" in "".join(warnings)

    stopping = ResumableTrainLoader(data, _unreadable({2, 5}), 2, seed=1)
    with pytest.raises(DatasetError, match=r"Cannot read image 'img[25].png' during training "):
        _take(stopping, 10)
    # everything gone: skipping stops too, after 100 tries for one sample
    gone = ResumableTrainLoader(data, _unreadable(range(10)), 2, seed=1, skip_bad_images=True)
    with pytest.raises(DatasetError, match=r"\(100 unreadable images in a row\)"):
        _take(gone, 1)
