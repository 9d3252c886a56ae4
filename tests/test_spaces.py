"""Search spaces: networks that export and run, ops that match the exported graph, tables that add up."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwlat.errors import ConfigError
from hwlat.profiler.opspec import OpSpec
from hwlat.search.spaces import SPACES, InvalidArchError, UnknownSpaceError, get_space
from hwlat.search.spaces.nb201 import Nb201Space
from tests.onnx_kernels import onnx_kernels

NAMES = list(SPACES)
NUM_CLASSES = {"proxyless": 1000, "ofa_mbv3": 1000, "nb201": 10, "fbnet": 1000}
# Corner cases of the NB201 cell: every node zero; a conv ending one cell absorbing the
# ReLU that starts the next; a node nothing uses; all identities.
NB201_GENOTYPES = [
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|",
    "|none~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|none~1|none~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
]


def _samples(space, n: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def _export_cases(name: str) -> list[tuple[int, ...]]:
    space = get_space(name)
    cases = _samples(space, 2, seed=7)
    if name == "nb201":
        cases += [space.from_genotype(g) for g in NB201_GENOTYPES]
    if name == "ofa_mbv3":  # smallest resolution and depth, to cover the other end
        cases.append(space.canonicalize([0] * len(space.decisions)))
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_networks_export_run_and_match_ops(name):
    space = get_space(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for arch in _export_cases(name):
        model = space.to_onnx(arch)
        assert Counter(onnx_kernels(model)) == Counter(space.ops(arch)), space.to_dict(arch)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(space.input_shape(arch)).astype(np.float32)
        (y,) = session.run(None, {"input": x})
        assert y.shape == (1, NUM_CLASSES[name])
        with torch.no_grad():  # the exported graph computes what the torch module computes
            expected = space.to_torch(arch)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_torch_module_has_batchnorm_and_is_in_eval_mode():
    space = get_space("proxyless")
    module = space.to_torch(_samples(space, 1)[0])
    assert not module.training
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


@pytest.mark.parametrize("name", NAMES)
def test_unique_ops_cover_1000_sampled_architectures(name):
    space = get_space(name)
    unique = set(space.unique_ops())
    seen = set()
    for arch in _samples(space, 1000, seed=1):
        seen.update(space.ops(arch))
    assert seen <= unique
    assert len(unique) == len(list(space.unique_ops()))  # no repeats


@pytest.mark.parametrize("name", NAMES)
def test_cells_add_up_to_ops(name):
    space = get_space(name)
    cells = space.cells()
    assert cells[0] == ()
    assert len(space.cell_keys()) == len(cells) == len(space.cell_resolutions())
    assert len(set(space.cell_keys())) == len(cells)
    archs = _samples(space, 200, seed=2)
    batch = space.cell_indices_batch(archs)
    assert batch.shape == (len(archs), len(space.slots))
    for arch, row in zip(archs, batch, strict=True):
        assert (space.cell_indices(arch) == row).all()
        assert Counter(op for i in row for op in cells[i]) == Counter(space.ops(arch))


@pytest.mark.parametrize("name", NAMES)
def test_cell_sum_equals_summing_the_cells(name):
    space = get_space(name)
    values = np.random.default_rng(0).uniform(0.01, 1.0, len(space.cells()))
    archs = _samples(space, 200, seed=3)
    expected = np.array([values[space.cell_indices(a)].sum() for a in archs])
    summer = space.cell_sum(values)
    assert np.allclose([summer.one(a) for a in archs], expected, rtol=1e-12)
    assert np.allclose(summer.batch(archs), expected, rtol=1e-12)
    assert np.allclose(summer.batch(np.asfortranarray(archs)), expected, rtol=1e-12)
    assert np.allclose(summer.batch(archs[:5]), expected[:5], rtol=1e-12)  # the small-batch path
    assert summer.batch([]).shape == (0,)
    with pytest.raises(ValueError, match="option indices"):
        summer.batch(np.zeros((3, len(space.decisions) + 1), dtype=int))


@pytest.mark.parametrize("name", NAMES)
def test_architecture_round_trips_and_operators(name):
    space = get_space(name)
    rng = np.random.default_rng(3)
    archs = _samples(space, 50, seed=3)
    for a, b in zip(archs, archs[1:], strict=False):
        space.validate(a)
        assert space.canonicalize(a) == a
        vec = space.encode(a)
        assert vec.shape == (space.encoding_length,)
        assert space.decode(vec) == a
        assert space.from_dict(space.to_dict(a)) == a
        child = space.mutate(a, rng)
        assert child != a
        space.validate(child)
        space.validate(space.crossover(a, b, rng))
    noise = rng.standard_normal((20, space.encoding_length))
    for vec in noise:  # any vector decodes to a valid architecture
        space.validate(space.decode(vec))


def test_to_dict_reads_as_the_papers_choices():
    proxyless = get_space("proxyless")
    arch = proxyless.from_dict(
        {d.name: d.options[-1] if d.name == "resolution" else d.options[1] for d in proxyless.decisions}
    )
    names = proxyless.to_dict(arch)
    assert names["resolution"] == 224 and names["stage1.block0"] == "mb_k3_e6"
    ofa = get_space("ofa_mbv3")
    choices = ofa.to_dict(ofa.canonicalize([0] * len(ofa.decisions)))
    assert choices["stage1.depth"] == 2 and "stage1.block2.kernel" not in choices  # beyond depth
    assert ofa.from_dict({**choices, "resolution": "224"})[0] == ofa.resolutions.index(224)


def test_equal_networks_are_equal_tuples():
    proxyless = get_space("proxyless")
    d = {x.name: x.options[0] for x in proxyless.decisions}
    a = proxyless.from_dict({**d, "stage1.block1": "zero", "stage1.block2": "mb_k5_e6"})
    b = proxyless.from_dict({**d, "stage1.block2": "zero", "stage1.block1": "mb_k5_e6"})
    assert a == b
    assert Counter(proxyless.ops(a)) == Counter(proxyless.ops(b))
    ofa = get_space("ofa_mbv3")
    shallow = ofa.canonicalize([0] * len(ofa.decisions))
    with_hidden_choice = list(shallow)
    with_hidden_choice[ofa.block_decisions[0][3][0]] = 2  # kernel of a block beyond the depth
    assert ofa.canonicalize(with_hidden_choice) == shallow
    with pytest.raises(InvalidArchError, match="not canonical"):
        ofa.validate(tuple(with_hidden_choice))


def test_invalid_architectures_are_refused_clearly():
    space = get_space("fbnet")
    with pytest.raises(InvalidArchError, match="tuple of 23 option indices"):
        space.validate((0, 1))
    with pytest.raises(InvalidArchError, match="'stage1.block0' has 9 options"):
        space.validate((0, 9) + (0,) * 21)
    with pytest.raises(InvalidArchError, match="unknown decisions"):
        space.from_dict({"stage9.block0": "k3_e1"})
    with pytest.raises(InvalidArchError, match="not an option"):
        space.from_dict({"stage1.block0": "k7_e6"})
    with pytest.raises(InvalidArchError, match="missing decisions"):
        space.from_dict({"resolution": 224})
    with pytest.raises(UnknownSpaceError, match="known spaces: proxyless, ofa_mbv3, nb201, fbnet"):
        get_space("darts")
    with pytest.raises(ConfigError, match="no resolution"):
        list(get_space("ofa_mbv3").unique_ops(resolutions=[300]))


def test_sizes_match_the_papers():
    assert get_space("nb201").size() == 15625
    # Equal networks counted once (skips moved to the end of their stage):
    assert get_space("proxyless").size() == 6 * (6 * (1 + 6 + 36 + 216)) ** 5
    assert get_space("fbnet").size() == 9 * (9 * (1 + 8 + 64 + 512)) ** 5 * 9
    # OFA: "more than 10^19 sub-networks" per resolution.
    assert get_space("ofa_mbv3").size() == 5 * (9**2 + 9**3 + 9**4) ** 5


def test_ofa_keys_follow_the_ofa_and_proxylessnas_tables():
    keys = set(get_space("proxyless").cell_keys())
    assert "Conv-input:224x224x3-output:112x112x32" in keys
    assert "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0" in keys
    assert "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0" in keys
    assert "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1" in keys
    assert "Conv_1-input:7x7x320-output:7x7x1280" in keys and "Logits-input:7x7x1280-output:1000" in keys
    ofa_keys = set(get_space("ofa_mbv3").cell_keys())
    # MobileNetV3 keys carry the middle channels, SE and hardswish flags.
    assert (
        "expanded_conv-input:56x56x24-output:28x28x40-expand:144-kernel:5-stride:2-idskip:0-se:1-hs:0"
        in ofa_keys
    )
    assert (
        "expanded_conv-input:88x88x16-output:44x44x24-expand:48-kernel:3-stride:2-idskip:0-se:0-hs:0"
        in ofa_keys
    )  # resolution 176
    assert {
        "Conv_2-input:1x1x960-output:1x1x1280",
        "AvgPool2D-input:7x7x960-output:1x1x960",
        "Logits-input:1x1x1280-output:1000",
    } <= ofa_keys


def test_unique_ops_narrow_to_a_resolution():
    ofa = get_space("ofa_mbv3")
    at_160 = set(ofa.unique_ops(resolutions=[160]))
    stem = {
        r: OpSpec(
            "conv", (1, 3, r, r), out_channels=16, kernel=3, stride=2, padding=1, activation="hardswish"
        )
        for r in (160, 224)
    }
    assert at_160 < set(ofa.unique_ops())
    assert stem[160] in at_160 and stem[224] not in at_160


def test_nb201_genotype_strings_round_trip():
    space = Nb201Space()
    for genotype in NB201_GENOTYPES:
        assert space.to_genotype(space.from_genotype(genotype)) == genotype
    with pytest.raises(InvalidArchError, match="not a NAS-Bench-201 genotype"):
        space.from_genotype("|nor_conv_3x3~0|")


def test_resolution_is_configurable():
    space = get_space("proxyless", resolutions=(160, 224))
    assert space.size() == 2 * get_space("proxyless").size()
    assert {"Conv-input:160x160x3-output:80x80x32", "Logits-input:5x5x1280-output:1000"} <= set(
        space.cell_keys()
    )
    arch = space.from_dict(
        {
            **get_space("proxyless").to_dict(get_space("proxyless").sample(np.random.default_rng(0))),
            "resolution": 160,
        }
    )
    assert space.ops(arch)[0].input_shape == (1, 3, 160, 160)
