"""The KV cache's cost per token, read from GGUF headers, against llama.cpp's own cache; and the context
`serve` sizes from it."""

from __future__ import annotations

import pytest

from specgen.build import DEFAULT_CTX
from specgen.llama.gguf import read_gguf
from specgen.llama.kvcache import CTX_STEP, KV_SHARE, Memory, fit_context, kv_bytes_per_token


@pytest.fixture(params=["target_path", "coder_path"])
def model_path(request):
    """The tiny llama-architecture model and Qwen2.5-Coder (grouped-query attention: 2 KV heads of 14)."""
    return request.getfixturevalue(request.param)


def test_bytes_per_token_is_what_llama_cpp_caches(model_path):
    from specgen.llama.backend import Context, Model

    model = Model(model_path)
    ctx = Context(model, 256, n_threads=2)
    try:
        sizes = []
        for n in (32, 96):
            ctx.rollback_to(0)
            ctx.decode(list(range(100, 100 + n)), logits="last")
            sizes.append(model._lib.llama_state_seq_get_size(ctx.ptr, 0))
        # The saved state is the cached K and V rows plus a few bytes of position and sequence per token.
        measured = (sizes[1] - sizes[0]) / 64
        ours = kv_bytes_per_token(read_gguf(model_path))
        assert ours is not None and abs(measured - ours) < 0.01 * ours, (measured, ours)
    finally:
        ctx.close()
        model.close()


def trained(path) -> int:
    info = read_gguf(path)
    return info.metadata[f"{info.architecture}.context_length"]


def test_with_room_to_spare_serve_gets_the_trained_context(coder_path):
    info = read_gguf(coder_path)
    assert trained(coder_path) > DEFAULT_CTX  # else the rule has nothing to decide here
    fit = fit_context(info, [], Memory(1 << 50, "RAM"), DEFAULT_CTX)
    assert fit.n_ctx == trained(coder_path) and "trained" in fit.why


def test_short_memory_cuts_it_to_the_longest_that_fits(coder_path):
    info, draft = read_gguf(coder_path), read_gguf(coder_path)
    per_token = kv_bytes_per_token(info)
    spare = 2 * 10_000 * per_token  # half of it (KV_SHARE) holds about 10,000 tokens
    fit = fit_context(info, [], Memory(info.size + spare, "RAM"), DEFAULT_CTX)
    budget = spare * KV_SHARE
    assert fit.n_ctx % CTX_STEP == 0 and DEFAULT_CTX < fit.n_ctx < trained(coder_path)
    assert fit.n_ctx * per_token <= budget < (fit.n_ctx + CTX_STEP) * per_token
    assert f"trained for {trained(coder_path)}" in fit.why and "RAM" in fit.why
    # A draft model keeps a cache of the same length and its weights take memory too: less fits.
    with_draft = fit_context(info, [draft], Memory(info.size + spare, "RAM"), DEFAULT_CTX)
    assert with_draft.n_ctx < fit.n_ctx


def test_never_less_than_the_default_nor_more_than_trained(coder_path, target_path):
    info = read_gguf(coder_path)
    for memory in (Memory(info.size // 2, "RAM"), None):  # the weights alone do not fit; memory unknown
        fit = fit_context(info, [], memory, DEFAULT_CTX)
        assert fit.n_ctx == DEFAULT_CTX and fit.why
    tiny = read_gguf(target_path)
    floor = trained(target_path) * 2  # a floor above what the model was trained for
    assert fit_context(tiny, [], Memory(1 << 50, "RAM"), floor).n_ctx == trained(target_path)


def test_a_header_without_the_attention_shape_is_not_guessed(target_path):
    info = read_gguf(target_path)
    del info.metadata[f"{info.architecture}.attention.head_count"]
    assert kv_bytes_per_token(info) is None
    fit = fit_context(info, [], Memory(1 << 50, "RAM"), DEFAULT_CTX)
    assert fit.n_ctx == DEFAULT_CTX and "unknown" in fit.why
