"""The k-th smallest task: prompts, answers, reasoning-tree labels (with ties), pools and splits."""

import numpy as np
import pytest

from hopscope.data.kth_smallest import (
    KthExample, KthSmallestConfig, check_pool, make_split, resolve_pool, sample_lists, size_ranks, tree_depths,
)


def test_tree_labels_without_ties():
    ex = KthExample((7, 3, 9, 1, 5), k=2)
    assert ex.prompt == "7 3 9 1 5"
    assert ex.answer == 3 and ex.target == " 3"
    assert ex.ranks == (3, 1, 4, 0, 2)
    assert ex.depth == (-1, 0, -1, 1, -1)  # 3 is the root (depth 0), 1 the leaf (depth 1)
    assert ex.useful == (False, True, False, True, False)


def test_ties_follow_the_papers_labels():
    # the paper's label_generator: equal numbers share a rank; only a value's first occurrence is a statement
    ex = KthExample((4, 1, 1, 9, 1), k=2)
    assert ex.answer == 1
    assert ex.depth == (-1, 0, -1, -1, -1)  # the first 1 is the root; the later copies are noise
    assert ex.useful == (False, True, False, False, False)
    assert tree_depths((1, 1, 0), 2) == (0, -1, 1)  # root 1 (first copy), leaf 0, the second 1 is noise


def test_ties_at_the_boundary_with_k3():
    ex = KthExample((5, 2, 5, 5, 0), k=3)
    assert ex.answer == 5
    assert ex.useful == (True, True, False, False, True)
    assert ex.depth == (0, 1, -1, -1, 1)
    with pytest.raises(ValueError, match="k must lie"):
        tree_depths((1, 2), 3)


def test_size_ranks_are_a_permutation():
    r = size_ranks([3, 3, 3, 1])
    assert list(r) == [1, 2, 3, 0]


def test_char_spans_and_corruption():
    ex = KthExample((12, 5, 300), k=1)
    assert [ex.prompt[a:b] for a, b in ex.char_spans] == ["12", "5", "300"]
    new = ex.corrupted(1, 400)
    assert new.numbers == (12, 400, 300) and new.answer == 12 and ex.numbers[1] == 5


def test_config_validation():
    with pytest.raises(ValueError, match="k must lie"):
        KthSmallestConfig(n=4, k=5)
    with pytest.raises(ValueError, match="distinct"):
        KthSmallestConfig(pool=(1, 1, 2))


def test_splits_are_seeded_distinct_and_drawn_from_the_pool():
    cfg = KthSmallestConfig(n=6, pool=tuple(range(10, 50)), n_train=50, n_val=20, n_test=20, seed=3)
    a, b = sample_lists(cfg, "train"), sample_lists(cfg, "train")
    assert a.shape == (50, 6) and np.array_equal(a, b)
    assert not np.array_equal(sample_lists(cfg, "val"), sample_lists(cfg, "test"))
    assert set(np.unique(a)) <= set(cfg.pool)
    assert not np.array_equal(a, sample_lists(KthSmallestConfig(**{**cfg.to_dict(), "seed": 4}), "train"))
    assert np.array_equal(sample_lists(cfg, "test", 5), sample_lists(cfg, "test")[:5])  # prefixes agree
    assert len(make_split(cfg, "val")) == 20
    with pytest.raises(ValueError, match="unknown split"):
        sample_lists(cfg, "dev")


def test_config_round_trip(tmp_path):
    cfg = KthSmallestConfig(n=5, k=3, pool=(1, 2, 3, 4), seed=7)
    cfg.save(tmp_path / "task.json")
    assert KthSmallestConfig.load(tmp_path / "task.json") == cfg


@pytest.fixture(scope="module")
def gpt2_tok():
    from hopscope.models.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


def test_pool_is_single_tokens_for_gpt2(gpt2_tok):
    cfg = resolve_pool(KthSmallestConfig(pool_size=512), gpt2_tok)
    assert len(cfg.pool) == 512 and cfg.pool[:3] == (0, 1, 2)
    ex = make_split(cfg, "test", 3)
    for e in ex:
        assert len(gpt2_tok(e.prompt)["input_ids"]) == cfg.n  # one token per number
        assert len(gpt2_tok(e.target)["input_ids"]) == 1


def test_a_multi_token_pool_value_is_named(gpt2_tok):
    with pytest.raises(ValueError, match="pool value 123456 is not one token"):
        check_pool(gpt2_tok, (5, 123456))
    with pytest.raises(ValueError, match="123456"):
        resolve_pool(KthSmallestConfig(pool=(1, 123456)), gpt2_tok)
