"""CAVs: recover a planted concept direction, report held-out accuracy, and move vectors by the right scale."""

import numpy as np
import pytest

from elm_jax.data import cavs


def _planted(n=600, d=16, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(d)
    true /= np.linalg.norm(true)
    x = rng.standard_normal((n, d)).astype(np.float32)
    strength = x @ true + noise * rng.standard_normal(n)
    tagged = np.flatnonzero(strength > 1.0)  # users tag the items that show the concept most
    return x, tagged, true


def test_recovers_a_planted_direction_with_high_held_out_accuracy():
    x, tagged, true = _planted()
    cav = cavs.learn_cav(x, tagged, "funny", "semantic")
    assert cav.direction @ true > 0.9
    assert cav.accuracy > 0.85 and cav.n_positive == len(tagged)
    assert np.linalg.norm(cav.direction) == pytest.approx(1.0, abs=1e-6)


def test_a_rare_concept_is_held_out_from_both_classes():
    """10-20 sampled rows: a plain random split held out one class only for some seeds (accuracy NaN)."""
    x, _, _ = _planted(seed=2)
    for seed in range(40):
        tags = np.random.default_rng(seed).choice(len(x), 10, replace=False)
        assert np.isfinite(cavs.learn_cav(x, tags, "rare", "semantic", seed=seed).accuracy)


def test_a_concept_with_no_signal_is_near_chance():
    x, _, _ = _planted(seed=1)
    random_tags = np.random.default_rng(5).choice(len(x), 150, replace=False)
    assert cavs.learn_cav(x, random_tags, "noise", "semantic").accuracy < 0.65


def test_move_by_one_gap_goes_from_untagged_to_tagged_on_average():
    x, tagged, _ = _planted()
    cav = cavs.learn_cav(x, tagged, "funny", "semantic")
    untagged = np.setdiff1d(np.arange(len(x)), tagged)
    moved = cavs.move(x[untagged], cav, 1.0)
    shift = (moved - x[untagged]) @ cav.direction
    np.testing.assert_allclose(shift, cav.gap, rtol=1e-5)
    per_row = cavs.move(x[:3], cav, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose((per_row - x[:3]) @ cav.direction, [0, 0.5 * cav.gap, cav.gap], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="16 dims\\); got vectors of 3 dims"):
        cavs.move(np.zeros(3), cav, 1.0)


def test_learn_cavs_skips_rare_concepts_and_rejects_degenerate_ones():
    x, tagged, _ = _planted()
    learned = cavs.learn_cavs(x, {"funny": tagged, "rare": [1, 2, 3]}, "semantic")
    assert set(learned) == {"funny"}
    with pytest.raises(ValueError, match="'rare': 3 tagged"):
        cavs.learn_cav(x, [1, 2, 3], "rare", "semantic")


def test_near_constant_dimensions_do_not_hijack_the_direction():
    # Unit-norm text-encoder spaces have dimensions that barely vary; the CAV must still point where items vary.
    x, tagged, true = _planted()
    x = np.concatenate([x, 1e-6 * np.random.default_rng(2).standard_normal((len(x), 4)).astype(np.float32)], axis=1)
    cav = cavs.learn_cav(x, tagged, "funny", "semantic")
    assert cav.direction[:16] @ true > 0.9
    projected = x @ cav.direction
    assert cav.gap > 0.5 * (projected[tagged].mean() - np.delete(projected, tagged).mean())
