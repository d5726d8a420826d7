"""The accept/resample rule keeps the target's distribution exactly (no model needed)."""

import numpy as np
import pytest

from specgen.sampling import (Dist, SamplingParams, accept_or_resample, distribution, distributions, sample,
                              top_ids)

# Upper 0.1% points of chi-square: a correct sampler fails this 1 time in 1000.
CHI2_999 = {4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 9: 27.88}


def chi2(counts: np.ndarray, p: np.ndarray) -> float:
    n = counts.sum()
    mask = p > 0
    assert counts[~mask].sum() == 0, "drew a token the target gives zero probability"
    exp = n * p[mask]
    return float(((counts[mask] - exp) ** 2 / exp).sum())


def speculative_draws(p, q, n, rng):
    """One speculative position: x ~ q, then accept or resample."""
    out = np.zeros(len(p), dtype=np.int64)
    accepted = 0
    p, q = Dist.of(p), Dist.of(q) if q is not None else None
    for _ in range(n):
        x = sample(q, rng) if q is not None else DETERMINISTIC_X
        ok, tok = accept_or_resample(p, q, x, rng)
        accepted += ok
        out[tok] += 1
    return out, accepted / n


DETERMINISTIC_X = 3


@pytest.mark.parametrize("case", ["skewed", "disjoint-ish", "equal"])
def test_speculative_sampling_matches_target(case):
    rng = np.random.default_rng(1234)
    p = np.array([0.05, 0.30, 0.10, 0.25, 0.02, 0.08, 0.20, 0.0, 0.0, 0.0])
    q = {
        "skewed": np.array([0.40, 0.05, 0.05, 0.05, 0.20, 0.05, 0.05, 0.05, 0.05, 0.05]),
        "disjoint-ish": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.33, 0.33, 0.33]),
        "equal": p.copy(),
    }[case]
    counts, rate = speculative_draws(p, q, 40000, rng)
    assert chi2(counts, p) < CHI2_999[int((p > 0).sum()) - 1]
    # Acceptance rate of speculative sampling is sum(min(p, q)).
    assert abs(rate - np.minimum(p, q).sum()) < 0.015


def test_deterministic_draft_is_lossless_and_accepts_with_p_of_x():
    rng = np.random.default_rng(7)
    p = np.array([0.1, 0.2, 0.15, 0.4, 0.15])
    counts, rate = speculative_draws(p, None, 40000, rng)
    assert chi2(counts, p) < CHI2_999[4]
    assert abs(rate - p[DETERMINISTIC_X]) < 0.015


def test_draft_vocab_shorter_than_target():
    rng = np.random.default_rng(3)
    p = np.array([0.2, 0.3, 0.1, 0.2, 0.2])
    q = np.array([0.5, 0.25, 0.25])  # draft knows only ids 0..2
    counts = np.zeros(5, dtype=np.int64)
    for _ in range(30000):
        x = sample(Dist.of(q), rng)
        _, tok = accept_or_resample(Dist.of(p), Dist.of(q), x, rng)
        counts[tok] += 1
    assert chi2(counts, p) < CHI2_999[4]


def full(logits, history=(), **params) -> np.ndarray:
    """The distribution as a full row of probabilities."""
    return distribution(logits, list(history), SamplingParams(**params)).dense()


def test_distribution_transforms():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -8.0], dtype=np.float32)
    greedy = full(logits, temperature=0)
    assert greedy.tolist() == [1, 0, 0, 0, 0]
    p = full(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(p, soft)
    assert (full(logits, temperature=1.0, top_k=2, top_p=1, min_p=0) > 0).sum() == 2
    # min-p 0.2 keeps tokens with at least 20% of the top probability: e^-1 and e^-2 relative -> 2 kept
    assert (full(logits, temperature=1.0, top_k=0, top_p=1, min_p=0.2) > 0).sum() == 2
    # top-p keeps the smallest prefix reaching the mass
    tp = full(logits, temperature=1.0, top_k=0, top_p=0.7, min_p=0)
    assert (tp > 0).sum() == 2 and abs(tp.sum() - 1) < 1e-9
    # repeat penalty lowers a positive logit of a recent token
    pen = full(logits, [0], temperature=1.0, top_k=0, top_p=1, min_p=0, repeat_penalty=2.0)
    assert pen[0] < p[0]


def test_top_k_by_support_equals_the_full_sort():
    """The support is found by a pass over the row, not a sort of it: the same tokens, the same numbers, and
    the same draws as the full row gives."""
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(50_000) * 3).astype(np.float32)
    for k, top_p, min_p in ((40, 0.95, 0.05), (1, 1.0, 0.0), (200, 1.0, 0.0), (40, 0.5, 0.0)):
        params = SamplingParams(temperature=0.7, top_k=k, top_p=top_p, min_p=min_p)
        got = distribution(logits, [], params)
        order = np.argsort(-logits, kind="stable")[:k]
        z = logits[order].astype(np.float64) / 0.7
        ref = np.exp(z - z[0]) / np.exp(z - z[0]).sum()
        keep = min(len(ref), int(np.searchsorted(-ref, -min_p * ref[0], side="right")) if min_p else len(ref),
                   int(np.searchsorted(np.cumsum(ref), top_p)) + 1 if top_p < 1 else len(ref))
        assert set(got.ids.tolist()) == set(order[:keep].tolist())
        assert np.allclose(got.probs, (ref[:keep] / ref[:keep].sum())[np.argsort(order[:keep])])
        draws = np.random.default_rng(9), np.random.default_rng(9)
        dense = got.dense()
        for _ in range(200):  # one uniform each: the sparse and the full row draw the same token
            c = np.cumsum(dense)
            assert sample(got, draws[0]) == int(np.searchsorted(c, draws[1].random() * c[-1], side="right"))


def _full_sort_top(row: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((np.arange(len(row)), -row))
    return [int(i) for i in order if np.isfinite(row[i])][:k]


@pytest.mark.parametrize("high", [50, 10])
def test_top_k_of_a_peaked_row_that_leaves_the_first_floor_short(high):
    """A row whose every 64th logit overstates its top (a peaked code row): fewer than k tokens clear the first
    floor, and the second (50 high tokens) or the widening gaps (10) find the same k as a full sort."""
    rng = np.random.default_rng(11)
    row = (rng.standard_normal(4096) - 20).astype(np.float32)
    row[::64] = np.arange(64, dtype=np.float32)  # the sample's 3rd best (61) has 3 tokens at or above it
    spots = [i for i in rng.choice(4096, 200, replace=False) if i % 64][:high]
    row[spots] = rng.uniform(45, 60, len(spots)).astype(np.float32)
    assert (row >= 61).sum() < 40
    assert top_ids(row, 40).tolist() == _full_sort_top(row, 40)


def _reference(row: np.ndarray, params: SamplingParams) -> Dist:
    """The rule by a full sort of the row: top-k (equal logits: lower id first), softmax at the temperature,
    min-p, then top-p over the top-k's mass."""
    order = [i for i in np.lexsort((np.arange(len(row)), -row)) if np.isfinite(row[i])]
    top = np.array(order[:params.top_k or len(order)])
    e = np.exp(row[top].astype(np.float64) / params.temperature - row[top[0]] / params.temperature)
    keep = int((e >= params.min_p).sum()) if params.min_p else len(e)
    mass = np.cumsum(e)
    keep = max(min(keep, int(np.searchsorted(mass, params.top_p * mass[-1])) + 1), 1)
    ids = top[:keep]
    return Dist(np.sort(ids), (e[:keep] / mass[keep - 1])[np.argsort(ids)], len(row))


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of the kinds a verify batch holds: peaked (code), flat (many tokens near the top, so the whole
    top-k is needed), a near tie at the top, tied logits, banned tokens; *n* need not be a multiple of 64."""
    rows = (rng.standard_normal((6, n)) * 2).astype(np.float32)
    rows[0, rng.choice(n, 3, replace=False)] = [14.0, 12.5, 11.0]  # peaked
    rows[1] *= 0.05  # flat: every token within a logit of the top
    rows[2, [5, n - 1]] = 9.0  # a tie at the top, one of them in the last group
    rows[3, rng.choice(n, 60, replace=False)] = 8.0  # 60 tied logits: top-k cuts between equals by id
    rows[4, rng.choice(n, 40, replace=False)] = -np.inf  # banned tokens
    rows[4, 7] = 10.0
    rows[5, rng.choice(n, 30, replace=False)] = rng.uniform(4, 6, 30).astype(np.float32)  # a top-p cut weighs the mass
    return rows


@pytest.mark.parametrize("n", [49_984, 50_017])
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.5, min_p=0.02),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9),
    SamplingParams(temperature=0.7, min_p=0.0),
    SamplingParams(temperature=0.7, top_p=1.0),
    SamplingParams(temperature=0.7, top_k=200, top_p=0.5),
], ids=lambda p: f"T{p.temperature}-k{p.top_k}-p{p.top_p}-m{p.min_p}")
def test_a_batch_of_rows_gives_each_row_the_rule_and_what_the_row_alone_gives(n, params):
    """The verify batch's rows at once: each gets the tokens and numbers of a full sort, and exactly the
    distribution the row alone gets (so a seed draws the same text whatever was drafted)."""
    rows = _rows(np.random.default_rng(n), n)
    batch = distributions(rows, params)
    for row, got in zip(rows, batch):
        want = _reference(row, params)
        assert got.ids.tolist() == want.ids.tolist()
        assert np.allclose(got.probs, want.probs, rtol=1e-12, atol=0)
        alone = distribution(row, (), params)
        assert alone.ids.tolist() == got.ids.tolist() and alone.probs.tolist() == got.probs.tolist()
