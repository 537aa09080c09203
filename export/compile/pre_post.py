"""Bake pre- and post-processing into the graph: uint8 frames in, a uint8 class map out.

With this option an engine takes ``frames`` (N, H, W, 3) uint8 RGB, exactly as a camera delivers pixels
once resized, and returns ``classes`` (N, H, W) uint8. The host then copies 1 byte per pixel in and out
instead of 4 bytes x 3 channels in and 4 bytes x C classes out, and does no normalization or argmax.
Resizing stays on the host (the engine's input size is fixed by its profile, the camera's is not).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

FRAMES, CLASSES = "frames", "classes"
MAX_CLASSES = 256  # class ids 0..255 in the uint8 map


def embed_pre_post(model: onnx.ModelProto, mean: list[float], std: list[float]) -> onnx.ModelProto:
    """Wrap a graph with input ``images`` and output ``logits`` (as ``export_onnx`` writes them). The class map is
    uint8, so the logits may have at most MAX_CLASSES channels."""
    graph = gs.import_onnx(model)
    (images,) = [t for t in graph.inputs if t.name == "images"]
    (logits,) = [t for t in graph.outputs if t.name == "logits"]
    channels = logits.shape[1] if logits.shape is not None and len(logits.shape) > 1 else None
    if isinstance(channels, int) and channels > MAX_CLASSES:
        raise ValueError(f"embed_pre_post: {channels} classes do not fit the uint8 class map (at most {MAX_CLASSES}); "
                         "set embed_pre_post: false")
    n, _, h, w = images.shape
    frames = gs.Variable(FRAMES, np.uint8, [n, h, w, 3])
    classes = gs.Variable(CLASSES, np.uint8, [n, h, w])
    consumers = list(images.outputs)

    def node(op, inputs, attrs=None, dtype=np.float32):
        out = gs.Variable(f"frame_io/{op}_{len(graph.nodes)}", dtype)
        graph.nodes.append(gs.Node(op, f"frame_io/{op}_{len(graph.nodes)}", attrs or {}, inputs, [out]))
        return out

    x = node("Cast", [frames], {"to": onnx.TensorProto.FLOAT})  # (N, H, W, 3)
    x = node("Sub", [x, gs.Constant("frame_io/mean", np.asarray(mean, np.float32).reshape(1, 1, 1, 3))])
    x = node("Mul", [x, gs.Constant("frame_io/inv_std", (1 / np.asarray(std, np.float32)).reshape(1, 1, 1, 3))])
    x = node("Transpose", [x], {"perm": [0, 3, 1, 2]})  # (N, 3, H, W), what the network was exported with
    for consumer in consumers:
        for i, t in enumerate(consumer.inputs):
            if t is images:
                consumer.inputs[i] = x
    ids = node("ArgMax", [logits], {"axis": 1, "keepdims": 0}, np.int64)  # (N, H, W)
    # Through FLOAT: TensorRT converts UINT8 only from and to FLOAT and HALF ("kUINT8 conversions are only supported
    # for {kFLOAT, kHALF}", NvInferRuntimeBase.h, DataType::kUINT8, 10.3 and 11.1), so INT64 -> UINT8 is refused.
    # Class ids below 256 are exact in FLOAT, and FLOAT -> UINT8 truncates, which leaves them as they are.
    ids = node("Cast", [ids], {"to": onnx.TensorProto.FLOAT})
    graph.nodes.append(gs.Node("Cast", "frame_io/Cast_classes", {"to": onnx.TensorProto.UINT8}, [ids], [classes]))
    graph.inputs, graph.outputs = [frames], [classes]
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out
