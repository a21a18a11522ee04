"""The NNAPI delegate's rules (export/nnapi.py) on small graphs TensorFlow's own converter writes: its
partitioning against LiteRT's real XNNPACK partitions, the API-level rules of MEAN, int8 and fp16
weights, the 3-partition limit, and an op without a ported rule."""

from __future__ import annotations

import numpy as np
import pytest

from export.nnapi import MAX_PARTITIONS, nnapi_verdict, partition, read_graph
from export.xnnpack import xnnpack_partitions

tf = pytest.importorskip("tensorflow")
RNG = np.random.default_rng(0)


def _const(*shape):
    return tf.constant(RNG.normal(size=shape).astype("float32"))


def _convert(fn, spec, path, kind="fp32"):
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(spec)], fn)
    if kind == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([RNG.normal(size=spec.shape).astype("float32")] for _ in range(32))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(conv.convert())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nnapi")
    w1, w2, w3, w4 = _const(8, 16), _const(16, 16), _const(16, 4), _const(16, 16)

    @tf.function
    def mixed(x):  # CUMSUM: an op neither XNNPACK nor pocketkd's NNAPI port takes, between supported runs
        a = tf.nn.relu(tf.matmul(x, w1))
        e = tf.matmul(a, w4)  # independent of the first CUMSUM: greedy partitioning puts it in the first run
        c = tf.nn.relu(tf.matmul(tf.math.cumsum(a, axis=1), w2)) + e
        return tf.matmul(tf.math.cumsum(c, axis=1), w3)

    @tf.function
    def chain(x):  # supported runs of 1, 3, 2 and 1 nodes between CUMSUMs
        x = tf.math.cumsum(tf.matmul(x, w1), axis=1)
        x = tf.math.cumsum(tf.matmul(tf.nn.relu(tf.matmul(tf.matmul(x, w2), w2)), w2), axis=1)
        x = tf.math.cumsum(tf.matmul(tf.matmul(x, w2), w2), axis=1)
        return tf.matmul(x, w3)

    k, dense = _const(3, 3, 3, 8), _const(8, 2)

    @tf.function
    def cnn(x):  # conv -> global mean (MEAN) -> dense, as a squeeze / pooling head
        y = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME"))
        return tf.matmul(tf.reduce_mean(y, axis=[1, 2]), dense)

    @tf.function
    def pooled(x):  # a 32 x 32 average-pool window: 1024 elements
        y = tf.nn.avg_pool2d(tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME")), 32, 32, "VALID")
        return tf.matmul(tf.reshape(y, [1, 8]), dense)

    vec, img = tf.TensorSpec([1, 8], tf.float32), tf.TensorSpec([1, 8, 8, 3], tf.float32)
    big = tf.TensorSpec([1, 32, 32, 3], tf.float32)
    return {"mixed": _convert(mixed, vec, d / "mixed.tflite"), "chain": _convert(chain, vec, d / "chain.tflite"),
            "cnn": _convert(cnn, img, d / "cnn.tflite"), "cnn_fp16": _convert(cnn, img, d / "cnn16.tflite", "fp16"),
            "cnn_int8": _convert(cnn, img, d / "cnn8.tflite", "int8"),
            "pool_int8": _convert(pooled, big, d / "pool8.tflite", "int8")}


def test_partitioning_matches_litert(files):
    """The greedy partitioning ported from graph_info.cc, given the nodes XNNPACK takes, gives exactly
    the partitions LiteRT's XNNPACK delegate made (read back from its DELEGATE nodes)."""
    ops, litert = xnnpack_partitions(files["mixed"])
    assert len(litert) == 3  # FULLY_CONNECTED x2 | FULLY_CONNECTED + ADD | FULLY_CONNECTED
    nodes, _, _ = read_graph(files["mixed"])
    assert [n.op for n in nodes] == [op["op_name"] for op in ops]
    ours = [set(m) for delegated, m in partition(nodes, set().union(*litert)) if delegated]
    assert sorted(map(sorted, ours)) == sorted(map(sorted, litert))


def test_unported_op_is_refused_and_only_three_partitions_are_delegated(files):
    v = nnapi_verdict(files["chain"])
    d = v["levels"]["30"]
    assert d["refused"] == {"CUMSUM: no rule ported (pocketkd ports the rules of 44 op types)": 3}, d
    nodes, _, _ = read_graph(files["chain"])
    runs = [m for delegated, m in partition(nodes, {i for i, n in enumerate(nodes) if n.op != "CUMSUM"})
            if delegated]
    assert sorted(map(len, runs)) == [1, 1, 2, 3]  # four runs, the delegate keeps the three largest
    assert d["partitions"] == MAX_PARTITIONS and d["delegated"] == 6 and d["nodes"] == 10, d
    assert v["summary"].startswith("6/10 in 3 partitions at API 30 (refused: CUMSUM x3"), v["summary"]


def test_float_mean_needs_android_9(files):
    v = nnapi_verdict(files["cnn"])
    assert v["summary"] == f"all {v['levels']['30']['nodes']} nodes from API 28", v
    assert v["levels"]["27"]["refused"] == {"MEAN: Android sdk version less than 28": 1}
    assert not v["dynamic_shape"]


def test_fp16_weights_are_delegated_with_their_consumers(files):
    v = nnapi_verdict(files["cnn_fp16"])
    nodes, _, _ = read_graph(files["cnn_fp16"])
    assert sum(n.op == "DEQUANTIZE" and n.t(0).type == "FLOAT16" for n in nodes) >= 2  # conv and dense weights
    assert v["levels"]["28"]["fully_delegated"] and v["summary"].endswith("from API 28"), v
    # at API 27 MEAN splits the graph: the dense layer after it is a partition of its own, and its
    # weights' DEQUANTIZE stays on the CPU (only the largest partition takes fp16 weights along)
    at27 = v["levels"]["27"]
    assert at27["not_delegated"].get("DEQUANTIZE") == 1 and at27["not_delegated"].get("MEAN") == 1, at27


def test_int8_mean_with_its_own_output_grid_is_refused(files):
    """The delegate refuses a quantized MEAN whose output grid is not its input's. Which MEANs have one
    is read independently, from LiteRT's tensor details."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(files["cnn_int8"]))
    q = {t["index"]: t["quantization"] for t in it.get_tensor_details()}
    means = [op for op in it._get_ops_details() if op["op_name"] == "MEAN"]
    differ = sum(q[op["inputs"][0]] != q[op["outputs"][0]] for op in means)
    assert differ >= 1  # the converter calibrates the mean's output range on its own
    v = nnapi_verdict(files["cnn_int8"])
    at30 = v["levels"]["30"]
    assert at30["refused"] == {"MEAN: NNAPI requires that the input and output have the same quantization "
                               "parameters.": differ}, at30
    # int8 convolutions need NNAPI 1.2 (Android 10): before it only float or uint8 inputs
    assert v["levels"]["28"]["refused"].get("CONV_2D: Input should be Float or UINT8") == 1
    assert "CONV_2D" not in " ".join(at30["refused"])


def test_from_api_29_the_delegate_targets_devices(files):
    """With default options (disallow_nnapi_cpu) the delegate targets the phone's NNAPI devices from
    API 29, which lifts the reference CPU's limit on quantized average-pool windows, and then asks the
    drivers: the record says so."""
    v = nnapi_verdict(files["pool_int8"])
    refused = {lvl: d["refused"].get("AVERAGE_POOL_2D: Large filter window would overflow on the reference CPU path")
               for lvl, d in v["levels"].items()}
    assert refused == {"27": 1, "28": 1, "29": None, "30": None}, v["levels"]
    assert [d["asks_drivers"] for d in v["levels"].values()] == [False, False, True, True]
