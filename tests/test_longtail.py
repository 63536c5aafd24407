import numpy as np
import pytest

from concutmix_cli.data.longtail import (
    exponential_counts, select_longtail_indices, shot_groups,
)
from concutmix_cli.errors import UserError

# Training-set sizes of the LDAM-DRW protocol (docs/method-notes.md section 1).
PUBLISHED_SIZES = {
    (100, 500, 100): 10847, (100, 500, 50): 12608, (100, 500, 10): 19573,
    (10, 5000, 100): 12406, (10, 5000, 50): 13996, (10, 5000, 10): 20431,
}


def reference_count(n_max, num_classes, imbalance, c):
    # written out plainly: n_max * (1/IF)^(c/(C-1)), truncated toward zero
    return int(n_max * pow(1.0 / imbalance, c / (num_classes - 1)))


@pytest.mark.parametrize("classes, n_max, imbalance", sorted(PUBLISHED_SIZES))
def test_counts_of_all_six_cifar_settings(classes, n_max, imbalance):
    counts = exponential_counts(n_max, classes, imbalance)
    assert len(counts) == classes
    assert sum(counts) == PUBLISHED_SIZES[(classes, n_max, imbalance)]
    assert counts == [reference_count(n_max, classes, imbalance, c) for c in range(classes)]
    assert counts[0] == n_max and counts[-1] == n_max // imbalance
    assert counts == sorted(counts, reverse=True)


def test_hand_computed_cifar10_if100_profile():
    # 5000 * 0.01 ** (c / 9), truncated
    assert exponential_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_imbalance_below_one_is_rejected():
    with pytest.raises(UserError, match="at least 1"):
        exponential_counts(500, 100, 0.5)


def test_shot_groups_boundaries():
    groups = shot_groups([500, 101, 100, 20, 19, 5])
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    cifar = shot_groups(exponential_counts(500, 100, 100))
    assert [len(cifar[k]) for k in ("many", "medium", "few")] == [35, 35, 30]


def ldam_reference(labels, counts, seed):
    """The LDAM-DRW code path, written as they wrote it (global legacy RNG)."""
    np.random.seed(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        kept.extend(idx[:n_c])
    return np.array(kept)


@pytest.mark.parametrize("seed", [0, 10])
def test_selection_on_the_real_cifar100_archive(cifar100_npz, seed):
    labels = np.load(cifar100_npz)["train_y"]
    counts = exponential_counts(500, 100, 100)
    before = np.random.get_state()[1].copy()
    chosen = select_longtail_indices(labels, counts, seed)
    assert np.array_equal(np.random.get_state()[1], before)  # global RNG restored
    assert len(chosen) == 10847 and len(np.unique(chosen)) == 10847
    assert np.bincount(labels[chosen], minlength=100).tolist() == counts
    assert np.array_equal(chosen, ldam_reference(labels, counts, seed))


def test_seeds_pick_different_subsets(cifar100_npz):
    labels = np.load(cifar100_npz)["train_y"]
    counts = exponential_counts(500, 100, 100)
    a = select_longtail_indices(labels, counts, 0)
    b = select_longtail_indices(labels, counts, 10)
    assert not np.array_equal(a, b)
    assert set(a[:500]) == set(range(500))  # class 0 keeps all of its 500 images either way
