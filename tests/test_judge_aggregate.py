"""The seed paper's logprob score rule, checked against direct computations."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from emray.eval.aggregate import (
    MIN_NUMERIC_MASS,
    numeric_mass,
    score_from_logprobs,
    token_value,
)


def lp(p: float) -> float:
    return math.log(p)


def test_weighted_mean_normalised_by_numeric_mass():
    top = {"80": lp(0.5), "90": lp(0.3), "REFUSAL": lp(0.2)}
    assert score_from_logprobs(top) == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)


def test_single_certain_token():
    assert score_from_logprobs([("0", 0.0)]) == 0.0
    assert score_from_logprobs([("100", 0.0)]) == 100.0


@pytest.mark.parametrize("word", ["CODE", "REFUSAL", "UNKNOWN"])
def test_non_numeric_answers_give_no_score(word):
    top = [(word, lp(0.9)), ("10", lp(0.05)), ("20", lp(0.04))]
    assert numeric_mass(top) == pytest.approx(0.09)
    assert score_from_logprobs(top) is None


def test_mass_threshold_is_inclusive_at_a_quarter():
    assert score_from_logprobs([("40", lp(0.25)), ("CODE", lp(0.75))]) == pytest.approx(40.0)
    assert score_from_logprobs([("40", lp(0.2499)), ("CODE", lp(0.7501))]) is None
    assert MIN_NUMERIC_MASS == 0.25


def test_only_integers_0_to_100_count():
    for token in ["101", "-5", "5.5", "+5", "1_0", "٥", "", " ", "1e2", "abc"]:
        assert token_value(token) is None, token
    assert token_value(" 7") == 7 and token_value("007") == 7 and token_value("100") == 100
    top = [("101", lp(0.4)), ("50", lp(0.3)), (" 60", lp(0.3))]
    assert score_from_logprobs(top) == pytest.approx((50 * 0.3 + 60 * 0.3) / 0.6)


def test_same_value_twice_both_count():
    top = [("5", lp(0.3)), (" 5", lp(0.3)), ("95", lp(0.4))]
    assert score_from_logprobs(top) == pytest.approx((5 * 0.6 + 95 * 0.4) / 1.0)


def test_input_formats_agree():
    pairs = [("30", lp(0.6)), ("70", lp(0.3)), ("CODE", lp(0.1))]
    expected = (30 * 0.6 + 70 * 0.3) / 0.9
    as_dicts = [{"token": t, "logprob": v} for t, v in pairs]
    as_objects = [SimpleNamespace(token=t, logprob=v) for t, v in pairs]
    for form in (pairs, dict(pairs), as_dicts, as_objects):
        assert score_from_logprobs(form) == pytest.approx(expected)


def test_random_top20_matches_direct_computation():
    rng = random.Random(0)
    for _ in range(200):
        tokens = rng.sample([str(i) for i in range(101)] + ["CODE", "REFUSAL", "UNKNOWN", "The", " I"], 20)
        weights = [rng.random() ** 3 for _ in tokens]
        total = sum(weights) / rng.uniform(0.3, 1.0)  # top-20 rarely hold all the mass
        top = [(t, math.log(w / total)) for t, w in zip(tokens, weights)]
        num = [(int(t), w / total) for t, w in zip(tokens, weights) if t.isdigit()]
        mass = sum(p for _, p in num)
        expected = None if mass < 0.25 else sum(v * p for v, p in num) / mass
        got = score_from_logprobs(top)
        if expected is None:
            assert got is None
        else:
            assert got == pytest.approx(expected, rel=1e-12)
