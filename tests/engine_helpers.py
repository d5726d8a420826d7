"""Running an engine to the end, for the tests that look at its events."""

from __future__ import annotations

from specgen.engine import Summary


def run(engine, prompt_tokens, **kw) -> tuple[Summary, list]:
    events = list(engine.generate(prompt_tokens, **kw))
    assert isinstance(events[-1], Summary)
    return events[-1], events
