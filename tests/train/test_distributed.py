"""Data-parallel training (train/distributed.py): 2 ranks x batch B/2 must train like 1 process x batch B."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weightshare.core.errors import ConfigError
from weightshare.data.datasets import Split, batches
from weightshare.train.distributed import Distributed, is_main_process, launched, session

WORKER = Path(__file__).with_name("ddp_equivalence.py")
METHODS = ("sws", "dc", "admm", "pwfn")
# Tolerance of the equivalence (|single - ranked| <= ATOL + RTOL |single|, every tensor). Two ranks sum the
# batch's gradient in two halves and DDP averages them; one process sums it at once: the same numbers in
# another order, so float32 rounding (eps 6e-8) differs, by about one ulp per step. Measured after the 8-12
# steps of ddp_equivalence.py: at most 1.5e-8 absolute. ATOL is 60x that and a thousandth of one Adam step at
# lr 1e-3, so a penalty added once instead of on every rank (half its gradient) fails by orders of magnitude.
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def equivalence_runs(tmp_path_factory, run_python) -> Path:
    """The worker once in this process (batch B) and once under torchrun (2 ranks x B / 2)."""
    out = tmp_path_factory.mktemp("ddp")
    spec = importlib.util.spec_from_file_location("ddp_equivalence", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.run(out)
    done = run_python(str(WORKER), str(out), cwd=out, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_train_like_one_process(equivalence_runs, method):
    single = load_file(str(equivalence_runs / f"{method}_single.safetensors"))
    ranks = [load_file(str(equivalence_runs / f"{method}_rank{r}.safetensors")) for r in (0, 1)]
    assert set(ranks[0]) == set(single) and len(single) > 4
    for name, expected in single.items():
        got = ranks[0][name]
        if expected.dtype == torch.bool:  # masks and fixed sets: exactly the same
            assert torch.equal(got, expected), name
        else:
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL, msg=name)
        assert torch.equal(ranks[1][name], got), name  # the ranks end bit for bit alike


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_method_state_is_identical_on_every_rank_after_every_step(equivalence_runs, method):
    steps = {"sws": 8, "dc": 12, "admm": 12, "pwfn": 12}[method]  # epochs x 4 steps
    for rank in (0, 1):
        log = json.loads((equivalence_runs / f"{method}_rank{rank}.json").read_text())
        assert log == {"steps": steps, "differ": []}


@pytest.mark.slow
def test_batch_norm_statistics_end_each_epoch_alike(equivalence_runs):
    # Each rank updates them from its own examples; fit refuses ranks that differ after an epoch, so the
    # worker got here only if they were made alike (rank 0's, as DDP broadcasts them before every forward).
    ranks = [load_file(str(equivalence_runs / f"batchnorm_rank{r}.safetensors")) for r in (0, 1)]
    assert "2.running_mean" in ranks[0]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


@pytest.mark.slow
def test_the_consistency_check_names_what_differs(equivalence_runs):
    for rank in (0, 1):
        assert (equivalence_runs / f"check_rank{rank}.txt").read_text() == "the 2 processes disagree here on differs"


def test_ranks_batches_together_are_one_process_batches():
    n = 201  # odd: the sampler pads rank 1's last batch with one repeat so that both ranks take 7 steps
    train = Split(torch.arange(n).reshape(n, 1), torch.zeros(n, dtype=torch.long))  # x is the example's index
    ranks = [Distributed(r, 2, torch.device("cpu")) for r in (0, 1)]
    for epoch in (0, 3):
        single = [x.reshape(-1).tolist() for x, _ in batches(train, 32, shuffle=True, seed=7 + epoch)]
        shards = [[x.reshape(-1).tolist() for x, _ in d.batches(train, 32, seed=7, epoch=epoch)] for d in ranks]
        assert len(shards[0]) == len(shards[1]) == len(single) == ranks[0].steps(n, 32) == 7
        for step, expected in enumerate(single[:-1]):
            assert sorted(shards[0][step] + shards[1][step]) == sorted(expected)
        last = shards[0][-1] + shards[1][-1]
        assert len(single[-1]) == 9 and sorted(last) == sorted([*single[-1], single[0][0]])  # the repeat: the first


def test_epochs_reshuffle():
    train = Split(torch.arange(200).reshape(200, 1), torch.zeros(200, dtype=torch.long))
    rank = Distributed(1, 2, torch.device("cpu"))
    first, second = (torch.cat([x for x, _ in rank.batches(train, 64, seed=0, epoch=e)]) for e in (0, 1))
    assert len(first) == 100 and first.unique().numel() == 100  # half of the examples, each once
    assert not torch.equal(first, second) and not torch.equal(first.sort().values, second.sort().values)


def test_global_batch_must_split_over_the_ranks():
    with pytest.raises(ConfigError, match="'batch_size' is 33, which does not split over 2 processes"):
        Distributed(0, 2, torch.device("cpu")).local_batch(33)


def test_evaluation_shards_cover_every_item_once():
    for world in (2, 3, 4):
        parts = [Distributed(r, world, torch.device("cpu")).shard(61) for r in range(world)]
        covered = [i for part in parts for i in range(61)[part]]
        assert covered == list(range(61))


def test_started_alone_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "0")
    with session() as dist:
        assert dist is None and not launched() and is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
