import math

import pytest
import torch

from weightshare.methods.pwfn.pow2 import (
    SIGMA_MAX,
    SIGMA_MIN,
    _quantile,
    assign_centres,
    centre_set,
    pow2_closeness,
    power_terms,
    prior_sigma,
)


def test_power_terms_run_from_2_to_the_minus_b_to_just_below_the_largest_weight():
    assert power_terms(3, 1.0) == [0.125, 0.25, 0.5]  # 1.0 is itself a power of two: top is 1/2
    assert power_terms(3, 1.01) == [0.125, 0.25, 0.5, 1.0]
    assert power_terms(2, 0.3) == [0.25]
    assert power_terms(4, 0.05) == []  # every weight below 2^-4: no power fits
    assert power_terms(2, 0.0) == [] and power_terms(2, float("nan")) == []


def test_centre_set_hand_checked():
    # b = 3, max |mu| = 0.6: powers 1/8, 1/4, 1/2
    assert centre_set(3, 1, 0.6).tolist() == [-0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5]
    # sums of two (with repetition): 3/8 = 1/4 + 1/8 joins; 5/8, 3/4, 1 exceed 0.6
    assert centre_set(3, 2, 0.6).tolist() == [-0.5, -0.375, -0.25, -0.125, 0.0, 0.125, 0.25, 0.375, 0.5]
    # three terms: 7/8 is the first sum with three ones, and it exceeds 0.6
    assert centre_set(3, 3, 0.6).tolist() == centre_set(3, 2, 0.6).tolist()
    # b = 2, max 1.0: 1/4, 1/2 and their sums up to 1 (1/2 + 1/2 reaches the bound exactly)
    assert centre_set(2, 2, 1.0).tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]
    # the paper's set (b = 7, up to 4 terms) for weights up to 1: 99 per sign + zero
    assert centre_set(7, 4, 1.0).numel() == 199


@pytest.mark.parametrize(("b", "terms", "bound"), [(7, 4, 1.0), (5, 2, 0.9), (9, 3, 0.3)])
def test_centre_set_equals_multiples_of_2_to_the_minus_b_with_few_binary_ones(b, terms, bound):
    # a sum of k powers of two (repetition allowed) is n * 2^-b with at most k ones in n's binary form
    expected = sorted(n * 2.0**-b for n in range(1, int(bound * 2**b) + 1) if bin(n).count("1") <= terms)
    centres = centre_set(b, terms, bound)
    positive = centres[centres > 0].tolist()
    assert positive == expected
    assert centres.tolist() == [-v for v in reversed(positive)] + [0.0] + positive
    assert torch.equal(centres.float().double(), centres)  # exact in float32


def test_bad_centre_arguments_name_the_setting():
    with pytest.raises(ValueError, match="setting 'b' must be >= 1; got 0"):
        power_terms(0, 1.0)
    with pytest.raises(ValueError, match="terms must be >= 1"):
        centre_set(3, 0, 1.0)


def test_pow2_closeness_hand_checked():
    r = pow2_closeness(torch.tensor([0.5, 0.75, -3.0, 0.625, 0.0, 2.0**-40]))
    # 0.75: (0.25/0.75)(0.25/0.75) = 1/9; -3: (1/3)(1/3); 0.625: (0.125/0.625)(0.375/0.625) = 0.12
    assert r.tolist() == pytest.approx([0.0, 1 / 9, 1 / 9, 0.12, 0.0, 0.0])
    assert r.dtype == torch.float64


@pytest.mark.parametrize(
    "mu",
    [
        torch.zeros(10),
        torch.tensor([0.0, 1e-38, 1e-44, -3e-42, 2.0**-140, 0.3, -0.7, 0.0]),
        torch.tensor([0.0, 0.25, 0.5, 1.0, 0.3]),  # three quarters exactly on powers of two: quantile 0
        torch.randn(500) * 1e-30,
    ],
)
def test_prior_sigma_is_finite_and_clamped_for_zero_and_tiny_weights(mu):
    sigma = prior_sigma(mu)
    assert sigma.shape == mu.shape and sigma.dtype == mu.dtype
    assert bool(torch.isfinite(sigma).all())
    assert float(sigma.min()) >= float(torch.tensor(SIGMA_MIN)) and float(sigma.max()) <= float(torch.tensor(SIGMA_MAX))
    assert bool((sigma[mu == 0] == torch.tensor(SIGMA_MIN)).all())  # a zero weight sits on the zero centre


def test_prior_sigma_scales_to_0_0025_at_the_upper_quartile():
    torch.manual_seed(0)
    mu = torch.randn(1001) * 0.1
    r = pow2_closeness(mu)
    q75 = float(torch.quantile(r, 0.75))
    assert _quantile(r, 0.75) == pytest.approx(q75, rel=1e-12)
    expected = (0.0025 * r / q75).clamp(SIGMA_MIN, SIGMA_MAX).float()
    assert torch.allclose(prior_sigma(mu), expected, rtol=1e-6)
    at_q75 = prior_sigma(mu)[(r - q75).abs().argmin()]
    assert math.isclose(float(at_q75), 0.0025, rel_tol=1e-5)


# --- one fixing round ------------------------------------------------------------------------------


def test_zero_centre_is_found_by_value_after_other_centres_are_gone():
    # 0.5 is taken first (3 weights) and leaves the list; the reference would then read the middle index
    mu = torch.tensor([0.51, 0.5, 0.49, 0.001, -0.002, 0.26])
    a = assign_centres(mu, torch.full((6,), 0.02), 6, b=3)
    centre = dict(zip(a.position.tolist(), a.centre.tolist(), strict=True))
    assert centre == {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.0, 4: 0.0, 5: 0.25}
    assert a.group.tolist() == [0, 0, 0, 1, 1, 2]


def test_most_captured_centre_first_and_nearest_first_within_it():
    mu = torch.tensor([0.13, 0.12, 0.125, 0.25, 0.26])
    a = assign_centres(mu, torch.full((5,), 0.01), 2, b=3, zero_fix=False)
    assert a.position.tolist() == [2, 0] and a.centre.tolist() == [0.125, 0.125]  # 0.13 before 0.12 (tie: order)


def test_reach_and_terms_grow_until_a_far_weight_is_fixed():
    # sigma 1e-6: the nearest centre 0.25 is 5e4 sigmas away, 3/8 (two terms) 7.5e4
    a = assign_centres(torch.tensor([0.3]), torch.tensor([1e-6]), 1, b=3)
    assert a.centre.tolist() == [0.25] and a.delta >= 5e4 and a.terms == 4


def test_zero_fix_sends_tiny_weights_to_zero_at_once():
    mu = torch.tensor([2.0**-8, -(2.0**-9), 0.1, 0.0])
    on = assign_centres(mu, torch.full((4,), 1e-6), 3, b=7)  # 2^-8, 2^-9 < 2^-7
    assert on.position.tolist() == [0, 1, 3] and on.centre.tolist() == [0.0] * 3 and on.delta == 1.0
    off = assign_centres(mu, torch.full((4,), 1e-6), 3, b=7, zero_fix=False)
    assert off.delta > 1.0  # without zero_fix, only the exact zero is within reach at first


def test_assignment_refuses_what_would_never_end():
    with pytest.raises(ValueError, match="inc > 1"):
        assign_centres(torch.tensor([0.3]), torch.tensor([1e-6]), 1, b=3, inc=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        assign_centres(torch.tensor([float("nan")]), torch.tensor([0.1]), 1, b=3)
    everything = assign_centres(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.1]), 5, b=3)
    assert sorted(everything.position.tolist()) == [0, 1]  # asking for more than there is fixes all
