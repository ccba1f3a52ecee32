"""DiNA attention: backends agree with each other and with NAT's definition; gradients check."""
import itertools

import pytest
import torch

from pipeline.models.attention import reference
from pipeline.models.dina import DiNA, na2d, resolve_backend

# flex_attention (ours and natten's) runs eagerly on CPU on purpose: parity, not speed
pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.filterwarnings("ignore:return_lse is deprecated")]

SIZES = [(8, 8), (13, 11), (16, 16)]
CASES = [(h, w, k, d) for (h, w), k, d in itertools.product(SIZES, (3, 5, 7), (1, 2, 3))
         if k * d <= min(h, w)]


def qkv(height, width, heads=2, head_dim=8, batch=2, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shape = (3, batch, height, width, heads, head_dim)
    return torch.randn(shape, generator=gen, dtype=dtype).unbind(0)


def bias(heads, kernel_size, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen, dtype=dtype)


@pytest.mark.parametrize("height,width,kernel_size,dilation", CASES)
def test_reference_matches_natten(height, width, kernel_size, dilation):
    pytest.importorskip("natten")
    q, k, v = qkv(height, width)
    expected = na2d(q, k, v, kernel_size, dilation, backend="natten")
    got = na2d(q, k, v, kernel_size, dilation, backend="reference")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("height,width,kernel_size,dilation", CASES)
def test_flex_matches_reference(height, width, kernel_size, dilation, with_bias):
    q, k, v = qkv(height, width)
    rpb = bias(2, kernel_size) if with_bias else None
    expected = na2d(q, k, v, kernel_size, dilation, rpb, backend="reference")
    got = na2d(q, k, v, kernel_size, dilation, rpb, backend="flex")  # eager flex on CPU
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def nat_axis(i, length, kernel_size, dilation):
    """Keys and bias indices of query i along one axis, straight from NAT/DiNAT's definition:
    the k nearest members of i's dilation group (window shifted inside the group at borders),
    and the bias row start of NAT's kernels (get_pb_start), one step per key."""
    half = kernel_size // 2
    members = list(range(i % dilation, length, dilation))
    start = min(max(members.index(i) - half, 0), len(members) - kernel_size)
    keys = members[start:start + kernel_size]
    if dilation == 1:
        pb = half + (i < half) * (half - i) + (i + half >= length) * (length - i - 1 - half)
    elif i - half * dilation < 0:
        pb = kernel_size - 1 - i // dilation
    elif i + half * dilation >= length:
        pb = (length - i - 1) // dilation
    else:
        pb = half
    return keys, [pb + t for t in range(kernel_size)]


@pytest.mark.parametrize("height,width,kernel_size,dilation", [(7, 9, 3, 2), (11, 10, 3, 3),
                                                               (9, 9, 5, 1)])
def test_reference_matches_nat_definition_with_bias(height, width, kernel_size, dilation):
    q, k, v = qkv(height, width, batch=1, dtype=torch.float64)
    rpb = bias(2, kernel_size, dtype=torch.float64)
    expected = torch.empty_like(q)
    for y, x in itertools.product(range(height), range(width)):
        rows, bias_rows = nat_axis(y, height, kernel_size, dilation)
        cols, bias_cols = nat_axis(x, width, kernel_size, dilation)
        keys = [(r, c) for r in rows for c in cols]
        offsets = [(br, bc) for br in bias_rows for bc in bias_cols]
        for head in range(2):
            scores = torch.stack([q[0, y, x, head] @ k[0, r, c, head] * 8 ** -0.5
                                  + rpb[head, br, bc] for (r, c), (br, bc) in zip(keys, offsets)])
            values = torch.stack([v[0, r, c, head] for r, c in keys])
            expected[0, y, x, head] = scores.softmax(0) @ values
    got = na2d(q, k, v, kernel_size, dilation, rpb, backend="reference")
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("height,width,kernel_size,dilation", CASES)
def test_reference_formulations_agree(height, width, kernel_size, dilation, with_bias):
    """The reference backend switches from dense-masked SDPA to gathering on larger maps; the
    small maps here run both, so both are held to natten/flex parity."""
    q, k, v = qkv(height, width)
    rpb = bias(2, kernel_size) if with_bias else None
    torch.testing.assert_close(reference.dense(q, k, v, kernel_size, dilation, rpb),
                               reference.gather(q, k, v, kernel_size, dilation, rpb),
                               atol=1e-5, rtol=0)


def test_reference_picks_dense_on_small_maps_only():
    q, k, v = qkv(40, 40, heads=1, head_dim=4, batch=1)  # 1,600 tokens: the gather formulation
    assert 40 * 40 > reference.DENSE_MAX_TOKENS
    torch.testing.assert_close(na2d(q, k, v, 5, 3, backend="reference"),
                               reference.dense(q, k, v, 5, 3, None), atol=1e-5, rtol=0)


@pytest.mark.parametrize("formulation", [reference.dense, reference.gather])
def test_reference_gradcheck_with_bias(formulation):
    q, k, v = (t.requires_grad_() for t in qkv(7, 6, heads=2, head_dim=3, batch=1,
                                                dtype=torch.float64))
    rpb = bias(2, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: formulation(*t[:3], 3, 2, t[3]), (q, k, v, rpb))


def test_dina_clamps_dilation_to_the_map():
    torch.manual_seed(0)
    module = DiNA(dim=8, heads=2, kernel_size=3, dilation=4, bias=True, backend="reference")
    x = torch.randn(2, 8, 8, 9)
    assert module.effective_dilation(8, 9) == 2  # 3*4 > 8, so min(8, 9) // 3
    assert module.effective_dilation(12, 16) == 4
    q, k, v = module.qkv(x.permute(0, 2, 3, 1)).reshape(2, 8, 9, 3, 2, 4).unbind(3)
    attended = na2d(q, k, v, 3, 2, module.rpb, backend="reference").reshape(2, 8, 9, 8)
    expected = x + module.proj(attended).permute(0, 3, 1, 2)
    torch.testing.assert_close(module(x), expected)


def test_backend_choice_and_errors():
    assert resolve_backend("auto", bias=True, device="cpu") == "reference"
    assert resolve_backend("auto", bias=False, device="cpu") == "reference"
    assert resolve_backend("flex", bias=True, device="cpu") == "flex"
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        resolve_backend("fast", bias=False, device="cpu")
    q, k, v = qkv(8, 8)
    with pytest.raises(ValueError, match="no relative position bias"):
        na2d(q, k, v, 3, 1, bias(2, 3), backend="natten")
    with pytest.raises(ValueError, match="exceeds the 8x8 map"):
        na2d(q, k, v, 3, 3, backend="reference")
    with pytest.raises(ValueError, match="rpb must be"):
        na2d(q, k, v, 3, 1, bias(2, 5), backend="reference")


@pytest.mark.slow  # one inductor compile on CPU (~20 s)
def test_compiled_flex_compiles_once_for_every_dilation():
    """Dilations are table values, not compile-time constants: one kernel serves every block, so
    a model never reaches dynamo's recompile limit (where flex silently turns unfused)."""
    from torch._dynamo.utils import counters

    from pipeline.models.attention import flex

    torch._dynamo.reset()
    counters.clear()  # eager flex in earlier tests counts graphs too
    q, k, v = qkv(16, 16)
    for dilation in (1, 2, 1):
        rpb = bias(2, 5, seed=dilation)
        with torch.no_grad():
            got = flex.na2d(q, k, v, 5, dilation, rpb, compiled=True)
        expected = na2d(q, k, v, 5, dilation, rpb, backend="reference")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] == 1
