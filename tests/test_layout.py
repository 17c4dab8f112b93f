"""Tests of the channel-axis rule and the feature views every function reads its input through (a private
module: the public functions' own classes test the rule through them)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


class TestFeatures:
    """The channel-axis rule's views of X (lowrank_pool._layout)."""

    def test_nchw_is_read_without_a_copy(self):
        """The (B, f, n) view of a contiguous NCHW tensor shares memory with it."""
        from lowrank_pool._backend import namespace
        from lowrank_pool._layout import features

        xp = namespace(X=torch.zeros(1))
        x = torch.randn(2, 5, 3, 4)
        v = features(xp, x, 1)
        assert v.layout == "bfn" and v.data.data_ptr() == x.data_ptr()
        cl = x.to(memory_format=torch.channels_last)
        v = features(xp, cl, 1)
        assert v.layout == "bnf" and v.data.data_ptr() == cl.data_ptr()
        video = torch.randn(2, 5, 2, 3, 4).to(memory_format=torch.channels_last_3d)
        v = features(xp, video, 1)
        assert v.layout == "bnf" and v.data.data_ptr() == video.data_ptr()
        xn = np.zeros((2, 5, 3, 4))
        vn = features(namespace(X=xn), xn, 1)
        assert vn.layout == "bfn" and np.shares_memory(vn.data, xn)
        xl = np.moveaxis(np.zeros((2, 3, 4, 5)), -1, 1)  # numpy channels-last memory
        vl = features(namespace(X=xl), xl, 1)
        assert vl.layout == "bnf" and np.shares_memory(vl.data, xl)
