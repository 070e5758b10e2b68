"""FedAvg aggregation and the FedBN split of normalization layers."""
import numpy as np
import pytest

from fedgin.config import load_config
from fedgin.fl.aggregate import fedavg
from fedgin.train.model import make_model, norm_keys


def test_fedavg_weights_by_sample_count():
    prev = {"w": np.zeros(2, np.float32), "n": np.array(0, np.int64), "bn": np.full(2, 7.0, np.float32)}
    a = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3), "bn": np.ones(2, np.float32)}
    b = {"w": np.array([4.0, 8.0], np.float32), "n": np.array(6), "bn": np.ones(2, np.float32)}
    out = fedavg([(a, 2), (b, 1)], prev, local_keys={"bn"})
    np.testing.assert_allclose(out["w"], [2.0, 4.0])
    assert out["w"].dtype == np.float32
    assert out["n"] == 4 and out["n"].dtype == np.int64
    np.testing.assert_array_equal(out["bn"], prev["bn"])  # local keys never averaged
    with pytest.raises(ValueError, match="no client results"):
        fedavg([], prev)


def test_norm_keys_are_the_normalization_layers():
    model = make_model(load_config(overrides=["model.channels=[4, 8]", "model.strides=[2]"]))
    keys = norm_keys(model)
    assert keys and keys < set(model.state_dict())
    assert any(k.endswith("running_mean") for k in keys) and not any(k.endswith("conv.weight") for k in keys)
