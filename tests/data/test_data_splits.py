import pytest
import torch

from mibench_lib.data.splits import (
    check_disjoint,
    num_test,
    rank_identities,
    stratified_split,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestNumTest:
    @pytest.mark.parametrize(
        ("n", "fraction", "expected"),
        [(500, 0.2, 100), (30, 0.1, 3), (35, 0.1, 4), (4, 0.1, 1), (2, 0.9, 1), (9, 0.0, 0)],
    )
    def test_values(self, n, fraction, expected):
        assert num_test(n, fraction) == expected


class TestStratifiedSplit:
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 2, 2, 0, 1, 2])  # counts 4, 3, 5

    def test_partition_and_counts(self):
        tr, te = stratified_split(self.labels, test_fraction=0.34, rng=_gen())
        assert sorted(tr.tolist() + te.tolist()) == list(range(12))
        assert torch.equal(tr, tr.sort().values) and torch.equal(te, te.sort().values)
        # round(0.34 * 4) = 1, round(0.34 * 3) = 1, round(0.34 * 5) = 2
        assert torch.bincount(self.labels[te]).tolist() == [1, 1, 2]

    def test_determinism(self):
        a = stratified_split(self.labels, test_fraction=0.5, rng=_gen(1))
        b = stratified_split(self.labels, test_fraction=0.5, rng=_gen(1))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        others = {
            tuple(stratified_split(self.labels, test_fraction=0.5, rng=_gen(s))[1].tolist())
            for s in range(5)
        }
        assert len(others) > 1

    def test_zero_fraction(self):
        tr, te = stratified_split(self.labels, test_fraction=0.0, rng=_gen())
        assert len(tr) == 12 and len(te) == 0

    def test_exception(self):
        with pytest.raises(ValueError, match=r"1 class\(s\) have fewer than 2 images.*3 \(1\)"):
            stratified_split(torch.tensor([0, 0, 3]), test_fraction=0.5, rng=_gen())
        with pytest.raises(ValueError, match=r"test_fraction must lie in \[0, 1\), got 1.0"):
            stratified_split(self.labels, test_fraction=1.0, rng=_gen())


def test_rank_identities_ties_by_key():
    assert rank_identities({"b": 2, "a": 2, "c": 5, "d": 1}) == ["c", "a", "b", "d"]
    assert rank_identities({58: 3, 37: 3, 101: 4}) == [101, 37, 58]


def test_check_disjoint():
    check_disjoint([1, 2], [3], what="identities")
    with pytest.raises(ValueError, match="1 identities are in both: 2"):
        check_disjoint([1, 2], [2, 3], what="identities")
