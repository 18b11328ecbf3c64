"""fsac.cpu_quiet: a timed call waits for the process's spinning threads, and only for them."""

from __future__ import annotations

import threading
import time

import numpy as np

from fsac.cpu_quiet import wait_until_idle


def test_it_waits_while_a_thread_of_this_process_burns_a_core_and_not_after():
    stop = threading.Event()
    a = np.random.default_rng(0).standard_normal((64, 64))

    def spin():  # a runtime's worker thread busy-waiting after its call returned
        while not stop.is_set():
            a @ a

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        waited = wait_until_idle(max_s=0.2, window_s=0.02)
    finally:
        stop.set()
        t.join()
    assert waited >= 0.2  # never quiet while the thread ran: it waited out max_s
    waited = wait_until_idle(max_s=0.2, window_s=0.02)
    assert waited < 0.15  # the first quiet window ends it


def test_onnxruntime_spinning_threads_are_waited_for(tmp_path):
    """The case it is for: after a call, ONNX Runtime's threads (allow_spinning) keep a core
    busy; the wait lasts until they stop, and with spinning off there is nothing to wait for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fsac.runner import make_session

    n = 384
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert onnx  # the graph above
    x = np.ones((n, n), np.float32)
    waits = {}
    for spin in (True, False):
        s = make_session(model, 2, spin_wait=spin)
        for _ in range(3):
            s.run(None, {"x": x})
        wait_until_idle()
        s.run(None, {"x": x})
        waits[spin] = wait_until_idle(max_s=0.3, window_s=0.005)
        del s
    assert waits[False] < 0.05, waits
    assert waits[True] > waits[False] + 0.01, waits  # ~40 ms measured on a 2-core EPYC
