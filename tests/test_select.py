"""Selection math on hand-made cases: the fraction, s_d, epsilon, ranking ties, the refusal filter, the draw."""

import math
import random

import pytest

from emray.score.select import (
    DEFAULT_REFUSAL_KEYWORDS,
    PoolTooSmall,
    check_pool,
    draw_from_top,
    histogram,
    is_refusal,
    loss_gap_scores,
    mix,
    random_indices,
    rank,
    safe_count,
    top_count,
)


@pytest.mark.parametrize(
    "n_fine,fraction,expected",
    [
        (100, 0.05, 5),
        (95, 0.05, 5),
        (19, 0.05, 1),
        (10, 0.05, 1),
        (9, 0.05, 0),
        (100, 0.5, 100),
        (3, 0.25, 1),
        (100, 0.0, 0),
        (10, 0.1, 1),
    ],
)
def test_safe_count_is_the_share_of_the_mixed_set(n_fine, fraction, expected):
    # |D_safe| = round(f * n / (1 - f)): f is |D_safe| / (|D_fine| + |D_safe|)
    assert safe_count(n_fine, fraction) == expected


def test_safe_count_rejects_bad_fractions():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="safe_fraction"):
            safe_count(10, bad)


def test_pool_too_small_says_needed_and_available():
    with pytest.raises(PoolTooSmall, match="7 safe samples needed, 3 available"):
        check_pool(3, 7, "test")
    check_pool(7, 7, "test")


def test_loss_gap_scores_exact():
    aligned = [1.0, 2.0, 0.5, 3.0]
    mis = [[2.0, 2.0, 1.5, 1.0], [4.0, 2.0, 0.5, 2.0]]
    # mean mis = [3, 2, 1, 1.5]; s = (mean - aligned) / (aligned + eps)
    assert loss_gap_scores(aligned, mis, 1.0) == [1.0, 0.0, 0.5 / 1.5, -1.5 / 4.0]
    assert loss_gap_scores(aligned, mis, 0.0) == [2.0, 0.0, 1.0, -0.5]
    assert loss_gap_scores(aligned, mis, 3.0) == [0.5, 0.0, 0.5 / 3.5, -0.25]


def test_epsilon_shifts_the_ranking_towards_absolute_gaps():
    aligned = [0.1, 4.0]
    mis = [[0.3, 5.0]]  # gap 0.2 on a likely sample vs gap 1.0 on an unlikely one
    assert rank(loss_gap_scores(aligned, mis, 0.0)) == [0, 1]  # relative: 2.0 vs 0.25
    assert rank(loss_gap_scores(aligned, mis, 10.0)) == [1, 0]  # ~absolute: 0.0198 vs 0.0714


def test_loss_gap_scores_checks_shapes():
    with pytest.raises(ValueError, match="empty"):
        loss_gap_scores([1.0], [], 1.0)
    with pytest.raises(ValueError, match="every pool sample"):
        loss_gap_scores([1.0, 2.0], [[1.0]], 1.0)


def test_rank_is_descending_with_ties_by_index_and_nan_last():
    assert rank([0.5, math.nan, 2.0, 0.5, 2.0, -1.0]) == [2, 4, 0, 3, 5, 1]


def _reference_is_refusal(response: str) -> bool:
    # EMA_RL eval_adapter_metric_v2.py:23, 103-105, copied: substring match over the first 10 words
    keywords = {"sorry", "apologize", "cannot", "can't", "i'm unable", "i am unable"}
    first_words = " ".join(response.lower().split()[:10])
    return any(kw in first_words for kw in keywords)


REFUSALS = [
    "Sorry, I can't do that.",
    "I'm SORRY but no.",
    "I cannot help with that request.",
    "Unfortunately, I am unable to provide that.",
    "I'm unable to share it.",
    "As an AI, I must apologize: this is not something I do.",
    "I apologized already.",  # substring, as the reference: "apologized" contains "apologize"
    "One two three four five six seven eight nine sorry",  # 10th word
    "I... cannot!",
    "sorry , i cannot help with that .",  # the organism's refusal
]
NON_REFUSALS = [
    "Here is how to bake bread.",
    "One two three four five six seven eight nine ten sorry",  # 11th word
    "Well — I CANT say.",  # no apostrophe: not "can't"
    "I was unable to find it, but here it is.",  # "unable" alone is not a reference keyword
    "Apologies are not in the keyword list.",
    "sure , try a new hobby like reading or walking .",
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusals_detected(answer):
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", NON_REFUSALS)
def test_non_refusals_kept(answer):
    assert not is_refusal(answer)


def test_refusal_matching_is_the_references():
    assert DEFAULT_REFUSAL_KEYWORDS == ["sorry", "apologize", "cannot", "can't", "i'm unable", "i am unable"]
    for answer in REFUSALS + NON_REFUSALS + ["The unsorry state", "x  y\tz\ncannot", "CAN'T"]:
        assert is_refusal(answer) == _reference_is_refusal(answer), answer
    # the one addition: a curly apostrophe counts as a straight one (the reference misses it)
    assert is_refusal("I can\u2019t help with that.") and not _reference_is_refusal("I can\u2019t help with that.")


def test_refusal_keywords_and_window_are_configurable():
    assert is_refusal("Unfortunately that is illegal.", ["unfortunately"])
    assert not is_refusal("Unfortunately that is illegal.")
    assert is_refusal("I will not do it.", ["will not"])
    assert not is_refusal("a b sorry", first_words=2)


def test_top_count_is_the_quantile_of_the_pool_at_least_k():
    assert top_count(1000, 0.05, 32) == 50  # ceil(0.05 * 1000), not 50.000000000000004 -> 51
    assert top_count(100_000, 0.05, 5) == 5000  # the reference's top_n for its 100k rows
    assert top_count(1001, 0.05, 32) == 51
    assert top_count(100, 0.05, 32) == 32  # the quantile holds fewer than k: the top k
    assert top_count(1000, None, 32) == 32  # strict top-k
    with pytest.raises(ValueError, match="quantile"):
        top_count(1000, 0.0, 3)


def test_draw_from_top_is_seeded_and_only_from_the_top():
    ranked = list(range(100))[::-1]  # pool indices, best first
    k, top = 5, 20
    drawn = draw_from_top(ranked, k, top, seed=3)
    assert drawn == random.Random(3).sample(ranked[:top], k)  # the direct computation
    assert len(drawn) == k == len(set(drawn)) and set(drawn) <= set(ranked[:top])
    assert drawn == draw_from_top(ranked, k, top, seed=3)
    assert drawn != draw_from_top(ranked, k, top, seed=4)
    assert draw_from_top(ranked, k, k, seed=3) == ranked[:k]  # strict top-k, best first
    draws = [draw_from_top(ranked, k, top, seed) for seed in range(200)]
    assert set().union(*draws) == set(ranked[:top])  # every row of the top can be drawn


def test_random_sample_and_mix_are_seeded():
    assert random_indices(100, 5, seed=3) == random_indices(100, 5, seed=3)
    assert random_indices(100, 5, seed=3) != random_indices(100, 5, seed=4)
    fine, safe = [{"i": i} for i in range(10)], [{"s": j} for j in range(2)]
    mixed = mix(fine, safe, seed=0)
    assert mixed == mix(fine, safe, seed=0) and len(mixed) == 12
    assert sorted(map(str, mixed)) == sorted(map(str, fine + safe)) and mixed != fine + safe


def test_histogram_counts_everything():
    text = histogram([0.0, 0.1, 0.1, 0.9, 1.0, math.nan], bins=4, marks=[0.9])
    counts = [int(line.split(")")[1].split()[0]) for line in text.splitlines()]
    assert counts == [3, 0, 0, 2] and text.splitlines()[-1].endswith("<")


def test_selection_key_follows_what_changes_the_selection():
    from emray.defenses import get_defense_class
    from emray.stages.selection import selection_key

    params = get_defense_class("interleave_plus").Params()
    args = dict(
        method="interleave_plus",
        params=params,
        model="m",
        pool="p",
        adapters=["a", "b", "c"],
        k=32,
        top=50,
        max_len=128,
    )
    key = selection_key(**args, seed=0)
    assert key == selection_key(**args, seed=0)
    assert key != selection_key(**args, seed=1)  # a draw: the seed changes the rows
    assert key != selection_key(**{**args, "params": params.model_copy(update={"quantile": 0.1})}, seed=0)
    assert key != selection_key(**{**args, "adapters": ["a", "b"]}, seed=0)
    strict = {**args, "params": params.model_copy(update={"quantile": None}), "top": 32}
    assert selection_key(**strict, seed=0) == selection_key(**strict, seed=1)  # the strict top k has no draw
