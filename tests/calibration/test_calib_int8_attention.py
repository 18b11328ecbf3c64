"""INT8 quantizes the matrix products with weights; the attention products stay float."""

from __future__ import annotations


def _qdq(exported_model, bottle, **kw):
    import onnx

    from fsac.calibration.quantize import QuantizeSettings, quantize_bytes
    from fsac.modelfile import load_model_file
    from fsac.runner import load_pixels

    data, info = load_model_file(exported_model)
    px = load_pixels(sorted((bottle / "train" / "good").glob("*.png"))[:4], info.preprocess)
    q, run = quantize_bytes(data, px, QuantizeSettings(**kw))
    return onnx.load_from_string(q), run


def _attention_matmuls(model):
    consts = {i.name for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}

    def weight_like(name):  # an initializer, or an initializer through DequantizeLinear
        n = produced.get(name)
        return name in consts or (n is not None and n.op_type == "DequantizeLinear" and n.input[0] in consts)

    mm = [n for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/visual/")]
    return [n for n in mm if not any(weight_like(i) for i in n.input)], produced


def test_attention_products_stay_float_by_default(exported_model, bottle):
    model, run = _qdq(exported_model, bottle)
    att, produced = _attention_matmuls(model)
    assert len(att) == 2 * 2  # tiny config: 2 layers x (Q.K^T, A.V)
    for n in att:  # neither operand is dequantized: the product and its softmax run in float
        assert all(produced.get(i) is None or produced[i].op_type != "DequantizeLinear" for i in n.input), n.name
    n_weight_dq = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert n_weight_dq > 0 and run["nodes_excluded"] >= len(att)

    old, _ = _qdq(exported_model, bottle, const_weights_only=False)
    att_old, produced_old = _attention_matmuls(old)
    assert any(produced_old.get(i) is not None and produced_old[i].op_type == "DequantizeLinear"
               for n in att_old for i in n.input)  # the earlier default quantized them


def test_activation_matmuls_lists_only_products_of_two_activations(exported_model):
    import onnx

    from fsac.calibration.quantize import activation_matmuls

    names = activation_matmuls(exported_model)
    model = onnx.load(str(exported_model))
    consts = {i.name for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    weight_mms = [n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.input) & consts]
    assert weight_mms and not set(weight_mms) & set(names)
    assert all(nodes[n].op_type == "MatMul" and not set(nodes[n].input) & consts for n in names)
    assert len([n for n in names if n.startswith("/visual/")]) == 4


def _quantized_products(model):
    """MatMul / Gemm nodes with a dequantized weight operand, and each one's consumers."""
    consts = {i.name for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    q = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(
        produced.get(i) is not None and produced[i].op_type == "DequantizeLinear" and produced[i].input[0] in consts
        for i in n.input)]
    return q, consumers


def test_quantized_products_give_float_outputs_by_default(exported_model, bottle):
    model, _ = _qdq(exported_model, bottle)
    products, consumers = _quantized_products(model)
    assert products
    for n in products:  # no QuantizeLinear -> DequantizeLinear round trip after the product
        assert not any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], [])), n.name

    old, _ = _qdq(exported_model, bottle, float_outputs=False)
    products, consumers = _quantized_products(old)
    assert any(c.op_type == "QuantizeLinear" for n in products for c in consumers.get(n.output[0], []))
