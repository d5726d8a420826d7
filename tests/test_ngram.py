"""The n-gram drafter's copies and the confidence it reports (token lists only, no model)."""

import numpy as np

from specgen.drafters import NgramDrafter
from specgen.drafters.ngram import _DOUBT, _SHIFT_PRIOR_SD, _Shift, _logit
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


def quotes(d: NgramDrafter, source: list[int], rounds: int, taken: int) -> list:
    """A reply that quotes six tokens of its prompt *rounds* times; each time the target takes *taken*
    tokens of the copy then offered, and then says something else.  The drafts offered, in order."""
    prompt = source + [1]
    d.prefill(prompt)
    history, offered = list(prompt), []
    for k in range(rounds):
        history += source[10 * k: 10 * k + 6]
        offered.append(draft(d, history))
        assert offered[-1].tokens[0] == source[10 * k + 6]
        history += source[10 * k + 6: 10 * k + 6 + taken] + [2]
    return offered


def test_a_few_lucky_first_tokens_do_not_make_a_copy_certain():
    # On a CPU a first token rated near-certain buys a 16-row verify, about six plain steps.
    firsts = [got.confidence[0] for got in quotes(NgramDrafter(), list(range(100, 200)), 5, taken=1)]
    assert firsts[-1] > firsts[0]  # the hits count...
    assert firsts[-1] < 0.95  # ...but four of them at a middling rate are not proof


def test_a_copy_is_rated_by_copies_that_started_from_as_short_a_match():
    trained, fresh = NgramDrafter(), NgramDrafter()
    source = list(range(100, 160))
    for _ in range(4):  # earlier replies: copies from a 20-token match that ran to the end
        trained.prefill(source + [1])
        history = source + [1] + source[:20]
        got = draft(trained, history)
        draft(trained, history + got.tokens + [source[len(got.tokens) + 20]])
        assert got.tokens == source[20:36]
    other = list(range(300, 360)) + [1]
    history = other + other[:4]  # now a copy from a 4-token match
    for d in (trained, fresh):
        d.prefill(other)
    a, b = draft(trained, history), draft(fresh, history)
    assert a.tokens == b.tokens == other[4:20]
    # Runs of 15 tokens after a 20-token match say nothing about how far a 4-token one goes.
    assert a.confidence[1:] == b.confidence[1:]


def test_continuations_that_stop_in_this_generation_lower_the_next_ones():
    d = NgramDrafter()
    source = list(range(100, 200))
    conts = [sum(got.confidence[1:4]) for got in quotes(d, source, 4, taken=2)]
    assert conts[-1] < conts[0]
    d.prefill(source + [1])  # the next generation starts from the session's rates, not from this one's misses
    assert sum(draft(d, source + [1] + source[50:56]).confidence[1:4]) > conts[-1]


def test_a_copy_confirmed_by_a_plain_step_goes_on_as_a_continuation():
    d = NgramDrafter()
    source = list(range(100, 160))
    prompt = source + [1]
    d.prefill(prompt)
    offered = draft(d, prompt + source[:4])  # the controller decodes plainly instead of verifying it...
    after = draft(d, prompt + source[:5])  # ...and the target's token is the copy's first
    assert after.tokens == source[5:21]
    # Its next token is the copy's second, no longer a fresh match's first: rated as it was a step ago.
    assert after.confidence[:4] == offered.confidence[1:5]


def test_a_followed_copy_that_reaches_a_fork_in_its_source_is_a_gamble_again():
    # The reply echoes "52 53 54", which the source says twice; the target follows the copy one plain
    # step at a time.  Where the two occurrences go on differently (60 or 70), which one the reply
    # takes is as open as a fresh match's first token that earlier context continued otherwise.
    one_way = [9, 52, 53, 54, 70, 71, 72, 73]
    forked = [9, 52, 53, 54, 60, 61, 62, 63] + [1] + one_way
    filler = [9, 40, 41, 42, 43, 44, 45, 46] + [1] + one_way
    firsts = []
    for prompt in (filler + [2], forked + [2]):
        d = NgramDrafter()
        d.prefill(prompt)
        for n in range(2, 5):  # "7 52", then the target's "53" and "54", each the copy's next token
            got = draft(d, prompt + [7, 52, 53, 54][:n])
        assert got.tokens[:4] == [70, 71, 72, 73]
        firsts.append(got.confidence[0])
    assert firsts[1] < firsts[0]


def test_a_history_that_is_not_a_continuation_is_matched_afresh():
    # The drafter keeps an index of where each token occurs as the history grows; a rolled-back or
    # unrelated history must be matched as a new drafter would match it.
    d = NgramDrafter()
    first = [5, 6, 7, 8, 9, 10, 5, 6]
    assert draft(d, first).tokens == [7, 8, 9, 10, 5, 6]
    other = [40, 41, 42, 43, 7, 8, 44, 45, 40, 41]  # "7 8" now sits where "5 6" did
    assert draft(d, other).tokens == draft(NgramDrafter(), other).tokens == [42, 43, 7, 8, 44, 45, 40, 41]
    shorter = first[:3] + [5, 6]  # a prefix of the first history, then new tokens
    assert draft(d, shorter).tokens == [7, 5, 6]


def test_copies_that_part_at_punctuation_lower_the_rate_there_not_inside_phrases():
    # Token texts: every tenth source token is a comma, the rest are words.
    def piece(t: int) -> bytes:
        return b"," if t % 10 == 9 else b" w"

    d = NgramDrafter(piece=piece)
    source = list(range(100, 200))
    quotes(d, source, 5, taken=3)  # each quote runs through its words and parts at the comma
    d.prefill(source + [1])
    got = draft(d, source + [1] + source[50:56])
    assert got.tokens[:5] == source[56:61]  # three words, the comma, a word after it
    word = got.confidence[2]
    assert got.confidence[3] < word and got.confidence[4] < word
    # Without token texts every token is a word, and a copy's rates only rise along it.
    plain = NgramDrafter()
    quotes(plain, source, 5, taken=3)
    plain.prefill(source + [1])
    flat = draft(plain, source + [1] + source[50:56]).confidence
    assert flat[3] >= flat[2]


def test_copies_that_take_a_number_and_leave_its_sentence_lower_the_rate_after_numbers():
    # A reply that quotes a date takes the figure, then closes its quote where the source goes on.
    def piece(t: int) -> bytes:
        return b"2018" if t % 10 == 8 else b" w"

    d = NgramDrafter(piece=piece)
    source = list(range(100, 200))
    quotes(d, source, 5, taken=3)  # each quote runs through the number and parts at the word after it
    d.prefill(source + [1])
    got = draft(d, source + [1] + source[50:56])
    assert got.tokens[:5] == source[56:61]  # two words, the number, the word after it, one more
    assert got.confidence[3] < got.confidence[2]


def test_token_texts_are_sorted_into_words_stops_quotes_and_numbers():
    from specgen.drafters.ngram import _NUMBER, _QUOTE, _STOP, _WORD, text_kind

    assert [text_kind(p) for p in (b"7", b" 2018", b"05")] == [_NUMBER] * 3
    assert [text_kind(p) for p in (b",", b" .", b"\n", b"  \n", b'."', b"):")] == [_STOP] * 6
    assert [text_kind(p) for p in (b'"', b' "', b"(", b" ``")] == [_QUOTE] * 4
    assert [text_kind(p) for p in (b" the", b"", b"    ", b"3.5", b"'s")] == [_WORD] * 5


def test_sources_are_copied_like_the_prompt_and_never_run_into_each_other():
    d = NgramDrafter()
    prompt = [1, 2, 3]
    escaped, other = list(range(100, 120)), list(range(200, 220))
    d.prefill(prompt, sources=[escaped, other])
    got = draft(d, prompt + escaped[:4])
    assert got.tokens == escaped[4:20]
    # A copy stops where its source ends: the next source is not the continuation.
    assert draft(d, prompt + escaped[:18]).tokens == escaped[18:]
    # A new prompt without sources forgets them.
    d.prefill(prompt)
    assert draft(d, prompt + escaped[:4]).tokens == []


def test_the_generations_shift_stays_on_the_exact_fit_as_verdicts_come_in():
    """The shift is refitted every step from grouped verdicts and the last fit: at every step it stays within
    a hundredth (of a rate) of the exact maximum a posteriori fit of every verdict so far."""
    def exact(xs: list[float], ys: list[float], rate: float) -> float:
        x, y, d = np.array(xs), np.array(ys), 0.0
        for _ in range(50):
            p = 1 / (1 + np.exp(-(x + d)))
            h = (p * (1 - p)).sum() + 1 / _SHIFT_PRIOR_SD ** 2
            d += ((y - p).sum() - d / _SHIFT_PRIOR_SD ** 2) / h
        return 1 / (1 + np.exp(-(_logit(rate) + d - _DOUBT * h ** -0.5)))

    rng = np.random.default_rng(4)
    shift, xs, ys = _Shift(), [], []
    for step in range(60):
        lucky = 0.5 if step < 30 else 1.3  # a generation that misses, then one that beats the session
        for _ in range(int(rng.integers(1, 10))):
            rate = float(rng.uniform(0.05, 0.99))
            hit = bool(rng.random() < min(rate * lucky, 1.0))
            shift.add(rate, hit)
            xs.append(_logit(rate))
            ys.append(float(hit))
        assert abs(shift.apply(0.8) - exact(xs, ys, 0.8)) < 0.01
