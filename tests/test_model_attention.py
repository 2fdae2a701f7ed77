"""Neighborhood attention: the window rule, the torch backend against a dense reference, natten, backends."""

from __future__ import annotations

import sys

import pytest
import torch

from bids_phydiff.model import attention as att


def _rule_window(i: int, n: int, k: int) -> range:
    """NATTEN's rule written out with Python ints: centre clamped to [R, n-1-R], k keys around it."""
    if n <= k:
        return range(n)
    r = k // 2
    centre = min(max(i, r), n - 1 - r)
    return range(centre - r, centre + r + 1)


@pytest.mark.parametrize("shape", [(7, 7), (9, 12), (10, 5)])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_reference_mask_follows_the_window_rule(shape, kernel):
    h, w = shape
    mask = att.neighborhood_mask(h, w, kernel)
    for qy in range(h):
        for qx in range(w):
            expected = torch.zeros(h, w, dtype=torch.bool)
            ys, xs = _rule_window(qy, h, kernel), _rule_window(qx, w, kernel)
            expected[ys.start : ys.stop, xs.start : xs.stop] = True
            assert torch.equal(mask[qy * w + qx].view(h, w), expected), (qy, qx)
    # every query sees exactly min(k, n) keys per axis and itself
    assert torch.all(mask.sum(1) == min(kernel, h) * min(kernel, w))
    assert torch.all(mask.diagonal())


def _qkv(shape, heads=2, d=8, batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, heads, d, generator=g, dtype=dtype) for _ in range(3)]


def _grads(fn, q, k, v, upstream):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = fn(q, k, v)
    (out * upstream).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("shape", [(8, 8), (9, 9), (13, 10), (16, 16), (21, 19), (24, 32)])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_torch_backend_matches_dense_reference(shape, kernel):
    q, k, v = _qkv(shape, seed=kernel + shape[0])
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    scale = 0.7
    ref = _grads(lambda a, b, c: att.dense_neighborhood_attention(a, b, c, kernel, scale), q, k, v, upstream)
    got = _grads(
        lambda a, b, c: att.blocked_neighborhood_attention(a, b, c, kernel, scale), q, k, v, upstream
    )
    for name, r, g in zip(("out", "dq", "dk", "dv"), ref, got):
        assert torch.allclose(g, r, atol=1e-5, rtol=0), (name, (g - r).abs().max().item())


@pytest.mark.parametrize("tile", [4, 5, (6, 10), 100])
def test_torch_backend_any_valid_tile_is_exact(tile):
    q, k, v = _qkv((24, 20), seed=3)
    ref = att.dense_neighborhood_attention(q, k, v, 7)
    got = att.blocked_neighborhood_attention(q, k, v, 7, tile=tile)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_torch_backend_refuses_a_tile_that_cannot_hold_the_windows():
    q, k, v = _qkv((10, 10))
    with pytest.raises(ValueError, match="tile"):
        att.blocked_neighborhood_attention(q, k, v, 7, tile=3)  # 10 % 3 = 1 <= R leaves windows outside the halo


def test_grids_smaller_than_the_kernel_attend_to_the_whole_axis():
    q, k, v = _qkv((4, 6))
    got = att.blocked_neighborhood_attention(q, k, v, 7)
    assert torch.allclose(got, att.global_attention(q, k, v), atol=1e-6)


def test_torch_backend_never_builds_the_dense_mask_on_a_large_grid():
    # 160 x 160 tokens: a dense fp32 score matrix alone would need 2.7 GB; the blocked one needs ~20 MB.
    q, k, v = _qkv((160, 160), heads=1, d=8, batch=1)
    out = att.blocked_neighborhood_attention(q, k, v, 7)
    assert out.shape == q.shape and torch.isfinite(out).all()
    # spot-check one interior and one corner query against the rule
    for qy, qx in [(80, 80), (0, 159)]:
        ys, xs = _rule_window(qy, 160, 7), _rule_window(qx, 160, 7)
        keys = k[0, ys.start : ys.stop, xs.start : xs.stop, 0].reshape(-1, 8)
        vals = v[0, ys.start : ys.stop, xs.start : xs.stop, 0].reshape(-1, 8)
        weights = torch.softmax(keys @ q[0, qy, qx, 0] / 8**0.5, dim=0)
        assert torch.allclose(out[0, qy, qx, 0], weights @ vals, atol=1e-5)


def test_even_kernel_is_refused():
    q, k, v = _qkv((8, 8))
    with pytest.raises(ValueError, match="odd"):
        att.blocked_neighborhood_attention(q, k, v, 4)


# ------------------------------------------------------------------------------------ natten backend

natten_missing = not att.natten_available()


@pytest.mark.skipif(natten_missing, reason="natten is not installed")
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # natten's uncompiled Flex path
@pytest.mark.parametrize("shape,kernel", [((9, 11), 3), ((9, 11), 7), ((8, 8), 5), ((5, 12), 7)])
def test_natten_backend_matches_torch_backend_forward(shape, kernel):
    q, k, v = _qkv(shape, heads=2, d=16, batch=1, seed=5)
    with torch.no_grad():
        ours = att.blocked_neighborhood_attention(q, k, v, kernel, 0.5)
        theirs = att.natten_neighborhood_attention(q, k, v, kernel, 0.5)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0), (theirs - ours).abs().max().item()


@pytest.mark.skipif(natten_missing, reason="natten is not installed")
def test_natten_backend_matches_torch_backend_backward():
    if not torch.cuda.is_available():
        pytest.skip("natten has no backward on CPU (its Flex backend is forward only); needs CUDA")
    q, k, v = (x.cuda() for x in _qkv((16, 16), heads=2, d=32, batch=2, seed=6))
    upstream = torch.randn_like(q)
    ours = _grads(lambda a, b, c: att.blocked_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    theirs = _grads(lambda a, b, c: att.natten_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    for name, r, g in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), (name, (g - r).abs().max().item())


# ------------------------------------------------------------------------------------ backend choice


def test_auto_backend_is_torch_on_cpu():
    assert att.resolve_backend("auto", torch.device("cpu")) == "torch"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        att.resolve_backend("flash", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend"):
        att.NeighborhoodAttention(7, backend="flash")


def test_natten_requested_but_absent_raises_and_auto_degrades(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "natten", None)  # makes `import natten` fail, as on a machine without it
    att.reset_backend_cache()
    try:
        assert not att.natten_available()
        with pytest.raises(RuntimeError, match="natten"):
            att.resolve_backend("natten", torch.device("cpu"))
        module = att.NeighborhoodAttention(7, backend="natten")
        q, k, v = _qkv((8, 8))
        with pytest.raises(RuntimeError, match="natten"):
            module(q, k, v)
        with caplog.at_level("INFO", logger=att.__name__):
            out = att.NeighborhoodAttention(7, backend="auto")(q, k, v)
        assert torch.allclose(out, att.dense_neighborhood_attention(q, k, v, 7), atol=1e-5)
        assert any("backend 'torch'" in r.getMessage() for r in caplog.records)
    finally:
        att.reset_backend_cache()  # monkeypatch restores the real module afterwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(16, 16), (21, 19), (64, 64)])
def test_torch_backend_on_cuda_matches_dense_reference(shape):
    q, k, v = (x.cuda() for x in _qkv(shape, heads=2, d=32, seed=8))
    upstream = torch.randn_like(q)
    ref = _grads(lambda a, b, c: att.dense_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    got = _grads(lambda a, b, c: att.blocked_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    for name, r, g in zip(("out", "dq", "dk", "dv"), ref, got):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), (name, (g - r).abs().max().item())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = att.blocked_neighborhood_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 7)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), ref[0], atol=5e-2)


# ------------------------------------------------------------------------------------ flex backend


@pytest.mark.slow  # one torch.compile per grid shape, ~15 s each on 2 cores
@pytest.mark.parametrize("shape,kernel", [((9, 12), 5), ((5, 12), 7)])  # the second: an axis under the kernel
def test_flex_backend_forward_matches_dense_reference_and_builds_its_mask_once_per_grid(shape, kernel, caplog):
    from bids_phydiff.model import flex_attention as flex

    q, k, v = _qkv(shape, heads=2, d=16, seed=kernel)
    module = att.NeighborhoodAttention(kernel, backend="flex")
    att.reset_backend_cache()  # so that the backend choice is logged again
    before = flex.block_mask.cache_info()
    with caplog.at_level("WARNING", logger=att.__name__), torch.no_grad():
        out = module(q, k, v, scale=0.7)
        again = module(q * 2, k, v, scale=0.7)
    ref = att.dense_neighborhood_attention(q, k, v, kernel, 0.7)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max().item()
    assert torch.allclose(again, att.dense_neighborhood_attention(q * 2, k, v, kernel, 0.7), atol=1e-5, rtol=0)
    after = flex.block_mask.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 1  # one mask per grid, reused
    assert [r.getMessage() for r in caplog.records if "backend 'flex'" in r.getMessage()] == [
        "neighborhood attention on cpu: backend 'flex' (requested; FlexAttention on the CPU runs forward only, "
        "training needs backend='torch')"]  # the CPU's limit is said, once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(16, 16), (21, 19)])
def test_flex_backend_on_cuda_matches_dense_reference_with_gradients(shape):
    from bids_phydiff.model.flex_attention import flex_neighborhood_attention

    q, k, v = (x.cuda() for x in _qkv(shape, heads=2, d=32, seed=9))
    upstream = torch.randn_like(q)
    ref = _grads(lambda a, b, c: att.dense_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    got = _grads(lambda a, b, c: flex_neighborhood_attention(a, b, c, 7), q, k, v, upstream)
    for name, r, g in zip(("out", "dq", "dk", "dv"), ref, got):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), (name, (g - r).abs().max().item())
