"""Bad tensors at the core's boundary (issue 17): complex, empty, absurd t/alpha, overflow.

Every public core function that takes a tensor goes through ``vslerp.checks.as_tensor``, so
complex and empty tensors are refused by name everywhere; θ and α are bounded by
``check_magnitude``; :class:`vslerp.MomentAccumulator` never stores inf/NaN sums.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import vslerp

D = 4


def _vec(seed: int = 0, n: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (D,) if n is None else (n, D)
    return torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5


def _calls(bad):
    """(argument name, call) for every public core function that takes tensors, with
    ``bad`` in place of that argument."""
    a, b, m, x = _vec(1), _vec(2), _vec(3), _vec(4, 5)
    acc = vslerp.MomentAccumulator(D)
    return [
        ("a", lambda: vslerp.slerp(bad, b, 0.5)),
        ("b", lambda: vslerp.slerp(a, bad, 0.5)),
        ("t", lambda: vslerp.slerp(a, b, bad)),
        ("a", lambda: vslerp.vslerp(bad, b, 0.5, 1.0, m)),
        ("b", lambda: vslerp.vslerp(a, bad, 0.5, 1.0, m)),
        ("t", lambda: vslerp.vslerp(a, b, bad, 1.0, m)),
        ("alpha", lambda: vslerp.vslerp(a, b, 0.5, bad, m)),
        ("mean", lambda: vslerp.vslerp(a, b, 0.5, 1.0, bad)),
        ("a", lambda: vslerp.angle(bad, b)),
        ("b", lambda: vslerp.angle(a, bad)),
        ("x", lambda: vslerp.conformity(bad)),
        ("x", lambda: vslerp.cosine_to_mean(bad, m)),
        ("mean", lambda: vslerp.cosine_to_mean(x, bad)),
        ("x", lambda: vslerp.unit_sum(bad)),
        ("cos", lambda: vslerp.conformity_fit(bad, x[:, 0])),
        ("conf", lambda: vslerp.conformity_fit(x[:, 0], bad)),
        ("mean_unit", lambda: vslerp.exact_conformity_coefficients(5, bad)),
        ("batch", lambda: acc.update(bad)),
        ("mean_a", lambda: vslerp.separability(bad, m.abs(), a, b.abs())),
        ("var_b", lambda: vslerp.separability(m, m.abs(), a, bad)),
        ("scores", lambda: vslerp.top_features(bad, 2)),
        ("cov", lambda: vslerp.off_diagonal_dominance(bad)),
        ("mean", lambda: vslerp.offset_ratio(bad, m.abs())),
        ("std", lambda: vslerp.offset_ratio(m, bad)),
        ("x", lambda: vslerp.thin_shell(bad, m)),
        ("mean", lambda: vslerp.thin_shell(x, bad)),
        ("image", lambda: vslerp.clip_loss(bad, x)),
        ("text", lambda: vslerp.clip_loss(x, bad)),
        ("alphas", lambda: vslerp.clip_loss_vs_alpha(x, x, bad, m)),
        ("mean", lambda: vslerp.clip_loss_vs_alpha(x, x, [0.0], bad)),
        ("values", lambda: vslerp.histogram(bad, m.sort().values)),
        ("edges", lambda: vslerp.histogram(x[:, 0], bad)),
        ("p_samples", lambda: vslerp.kl_divergence(bad, x[:, 0])),
        ("q_samples", lambda: vslerp.kl_divergence(x[:, 0], bad)),
        ("image", lambda: vslerp.conformity_kl_vs_alpha(bad, x, [0.0], m)),
        ("text", lambda: vslerp.conformity_kl_vs_alpha(x, bad, [0.0], m)),
        ("alphas", lambda: vslerp.conformity_kl_vs_alpha(x, x, bad, m)),
        ("mean", lambda: vslerp.conformity_kl_vs_alpha(x, x, [0.0], bad)),
    ]


def _ids(calls):
    return [f"{i}-{name}" for i, (name, _) in enumerate(calls)]


COMPLEX = torch.ones(5, D, dtype=torch.complex64)


@pytest.mark.parametrize("case", range(len(_calls(COMPLEX))), ids=_ids(_calls(COMPLEX)))
def test_complex_tensor_is_a_type_error_naming_the_argument(case):
    name, call = _calls(COMPLEX)[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # today: "Casting complex values to real discards ..."
        with pytest.raises(TypeError, match=rf"^{name} .*complex"):
            call()


@pytest.mark.parametrize("empty", [torch.zeros(0), torch.zeros(0, D), torch.zeros(5, 0)],
                         ids=["(0,)", "(0,D)", "(5,0)"])
@pytest.mark.parametrize("case", range(len(_calls(COMPLEX))), ids=_ids(_calls(COMPLEX)))
def test_empty_tensor_is_a_value_error_naming_the_argument(case, empty):
    name, call = _calls(empty)[case]
    with pytest.raises(ValueError, match=rf"^{name} .*empty"):
        call()


@pytest.mark.parametrize("value", [1e308, -1e308, 1e7, torch.tensor([0.5, 1e300], dtype=torch.float64)])
def test_absurd_t_and_alpha_are_refused_by_name(value):
    a, b, m = _vec(1), _vec(2), _vec(3)
    for name, call in [("t", lambda: vslerp.slerp(a, b, value)),
                       ("t", lambda: vslerp.vslerp(a, b, value, 1.0, m)),
                       ("alpha", lambda: vslerp.vslerp(a, b, 0.5, value, m))]:
        with pytest.raises(ValueError, match=rf"^{name} .* is too large: \|{name}\| <= 1e\+06"):
            call()


def test_large_but_allowed_values_never_give_nan_or_zeros():
    a, b, m = _vec(1).float(), _vec(2).float(), _vec(3).float()
    for t, alpha in [(1e6, 0.0), (0.5, 1e6), (-1e6, -1e6)]:
        out = vslerp.vslerp(a, b, t, alpha, m)
        assert torch.isfinite(out).all() and (out != 0).any()


def test_vslerp_whose_result_overflows_is_refused_not_inf():
    a, b = _vec(1).float(), _vec(2).float()
    mean = torch.full((D,), 1e35)
    with pytest.raises(ValueError, match="overflow"):
        vslerp.vslerp(a, b, 0.5, 1e6, mean)


def _state(acc):
    return {k: v.clone() for k, v in acc.state_dict().items()}


@pytest.mark.parametrize("scale", [1e200, 1e155])
def test_accumulator_refuses_overflowing_batch_and_stays_unchanged(scale):
    acc = vslerp.MomentAccumulator(D).update(_vec(0, 6))
    before = _state(acc)
    with pytest.raises(ValueError, match="batch.*overflow.*float64"):
        acc.update(_vec(1, 3) * scale)
    after = _state(acc)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert torch.isfinite(acc.covariance()).all()


def test_accumulator_merge_refuses_overflow_and_stays_unchanged():
    acc = vslerp.MomentAccumulator(D).update(_vec(0, 3) * 1e153)  # Σvvᵀ ~ 1e307: finite
    shard = vslerp.MomentAccumulator.from_state_dict(acc.state_dict())
    with pytest.raises(ValueError, match="overflow"):
        for _ in range(64):  # the sums grow by one shard per merge until they overflow
            before = _state(acc)
            acc.merge(shard)
    for key, value in _state(acc).items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("key", ["sum", "sum_outer", "sum_sq_norm"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_state_dict_with_non_finite_sums_is_refused_by_name(key, bad):
    state = vslerp.MomentAccumulator(D).update(_vec(0, 5)).state_dict()
    state[key] = state[key].clone()
    state[key].reshape(-1)[0] = bad
    with pytest.raises(ValueError, match=rf"{key}.*non-finite"):
        vslerp.MomentAccumulator.from_state_dict(state)


@pytest.mark.parametrize("count", [-3, 0])
def test_state_dict_with_bad_count_is_refused(count):
    state = vslerp.MomentAccumulator(D).update(_vec(0, 5)).state_dict()
    state["count"] = torch.tensor(count)  # negative, or 0 with non-zero sums
    with pytest.raises(ValueError, match="count"):
        vslerp.MomentAccumulator.from_state_dict(state)


@pytest.mark.parametrize(("dtype", "tiny"), [(torch.float32, 1e-30), (torch.float64, 1e-200)])
def test_tiny_vectors_are_not_zero_vectors(dtype, tiny):
    """‖v‖² underflows to 0 for such rows: their norm is recomputed scaled, not refused."""
    x = _vec(5, 6).to(dtype)
    small = x * tiny
    assert (torch.linalg.vector_norm(small, dim=1) == 0).all()  # the case being tested
    torch.testing.assert_close(vslerp.conformity(small), vslerp.conformity(x))
    torch.testing.assert_close(vslerp.cosine_to_mean(small, x[0]), vslerp.cosine_to_mean(x, x[0]))
    loss = vslerp.clip_loss(small, x)
    torch.testing.assert_close(loss.loss, vslerp.clip_loss(x, x).loss)
    with pytest.raises(ValueError, match="zero vector"):
        vslerp.conformity(torch.cat([x, torch.zeros(1, D, dtype=dtype)]))


def _huge(v: torch.Tensor, peak: float) -> torch.Tensor:
    return (v / v.abs().max() * peak).float()


@pytest.mark.parametrize("peak", [1e30, 3e38])
def test_huge_finite_vectors_are_computed_at_unit_scale_or_refused_never_nan(peak):
    """vSLERP is homogeneous: vslerp(s·a, s·b, t, α, s·m) = s·vslerp(a, b, t, α, m). The core
    computes huge inputs on rescaled copies; what cannot be represented is refused, never Inf/NaN."""
    a, b, m = _vec(1), _vec(2), _vec(3)
    scale = peak / float(torch.stack([a, b, m]).abs().max())
    for t, alpha in [(0.3, 0.0), (0.5, 1.0), (0.9, -1.5)]:
        want = vslerp.vslerp(a, b, t, alpha, m) * scale  # float64 reference, rescaled
        try:
            got = vslerp.vslerp((a * scale).float(), (b * scale).float(), t, alpha, (m * scale).float())
        except ValueError as err:
            assert "overflow" in str(err) and float(want.abs().max()) > torch.finfo(torch.float32).max / 2
            continue
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0.0)


def test_a_representable_slerp_of_huge_vectors_is_not_refused():
    """Wide angle: the SLERP weights exceed 1 and weight × entry overflows float32 while the
    result ([0, √10·1e38]) is representable; the core rescales instead of refusing it."""
    a, b = torch.tensor([3e38, 1e38]), torch.tensor([-3e38, 1e38])
    want = vslerp.slerp(a.double(), b.double(), 0.5)
    for out in (vslerp.slerp(a, b, 0.5), vslerp.vslerp(a, b, 0.5, 0.0, torch.ones(2))):
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e31)


def test_check_embedding_values_names_the_argument():
    from vslerp.checks import MAX_EMBEDDING_VALUE, check_embedding_values

    check_embedding_values("source embedding", torch.full((3,), MAX_EMBEDDING_VALUE))
    with pytest.raises(ValueError, match=r"^source embedding has an entry of magnitude 3e\+38"):
        check_embedding_values("source embedding", _huge(_vec(1), 3e38))
