"""Soft weight-sharing's own figures read the records the method writes, under the names it declares."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from weightshare.methods.sws.figures import Mixture


def test_mixture_assigns_weights_to_the_most_responsible_component():
    mix = Mixture(np.array([0.0, -0.5, 0.5]), np.array([0.01, 0.1, 0.1]), np.array([0.8, 0.1, 0.1]))
    assert mix.assign(np.array([0.001, -0.45, 0.6, 0.2])).tolist() == [0, 1, 2, 2]
