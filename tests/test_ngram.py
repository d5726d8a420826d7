"""The n-gram drafter's copies and the confidence it reports (token lists only, no model)."""

import numpy as np

from specgen.drafters import NgramDrafter
from specgen.sampling import SamplingParams

PARAMS = SamplingParams()
RNG = np.random.default_rng(0)


def draft(d: NgramDrafter, history: list[int], n: int = 16):
    return d.draft(history, n, PARAMS, RNG)


def test_a_confirmed_copy_earns_rising_confidence():
    d = NgramDrafter()
    source = list(range(100, 140))
    prompt = source + [1, 2]
    d.prefill(prompt)
    got = draft(d, prompt + source[:3])
    assert got.tokens == source[3:19]
    # Token i is judged only once tokens < i were accepted, i.e. the match grew by i.
    assert all(b >= a for a, b in zip(got.confidence[1:], got.confidence[2:]))
    assert got.confidence[-1] > got.confidence[0]


def test_context_that_went_on_differently_lowers_the_first_guess():
    plain, split = NgramDrafter(), NgramDrafter()
    one = [5, 6, 7, 8, 9, 10, 11, 12]
    two = [5, 6, 20, 21, 22, 23, 24, 25]  # the same two tokens, continued otherwise
    plain.prefill(one + [2])
    split.prefill(one + [1] + two + [2])
    a = draft(plain, one + [2, 5, 6])
    b = draft(split, one + [1] + two + [2, 5, 6])  # both earlier "5 6" match equally far back
    assert a.tokens[:2] == [7, 8] and b.tokens[:2] == [20, 21]  # the most recent occurrence
    assert b.confidence[0] < a.confidence[0]


def test_misses_in_this_generation_outweigh_the_session():
    d = NgramDrafter()
    source = list(range(100, 140))

    def one_step(prompt: list[int], echo: int, reply: int) -> float:
        """Echo a prompt token (a fresh one-token match), then have the target say *reply*."""
        history = prompt + [echo]
        got = draft(d, history)
        draft(d, history + [reply, 1])  # the drafter scores its guess on its next call
        return got.confidence[0]

    # Earlier generations: after echoing a prompt token the target went on copying.
    for k in range(6):
        d.prefill(source + [1])
        one_step(source + [1], 100 + 5 * k, 101 + 5 * k)
    d.prefill(source + [1])
    trusted = draft(d, source + [1, 131]).confidence[0]
    assert trusted > NgramDrafter().draft(source + [1, 131], 16, PARAMS, RNG).confidence[0]

    # A generation whose copies all fail: its own misses soon outweigh the session's trust.
    prompt = list(range(300, 340)) + [1]
    d.prefill(prompt)
    history = list(prompt)
    firsts = []
    for k in range(6):
        history = history + [300 + 5 * k]  # a token seen in the prompt...
        firsts.append(draft(d, history).confidence[0])
        history = history + [9000 + k]  # ...but the reply goes elsewhere
    assert firsts[0] == trusted
    assert firsts[-1] < trusted / 2
