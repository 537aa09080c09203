"""Triton's Python backend running this project's ONNX Runtime engine on the CPU (copied as ``1/model.py``
into every ``*_python`` model of a repository that ``python -m export triton`` writes).

For CPU-only servers: the engine beside this file (``model.onnx`` and its manifest) is loaded with the
session settings the manifest stores, as engines/onnxruntime.py loads it locally, so the server answers
exactly what the local engine answers. The requests Triton's dynamic batcher hands over together are run
as one batch (the engine's N is symbolic) and split again.

Needs only numpy and onnxruntime (of the version the manifest names) in the server's Python environment.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(__file__).parent
        engine = folder / "model.onnx"
        manifest = json.loads((folder / "model.onnx.manifest.json").read_text())
        if hashlib.sha256(engine.read_bytes()).hexdigest() != manifest["engine"]["sha256"]:
            raise pb_utils.TritonModelException(f"{engine} does not match its manifest; export the repository again")
        if manifest.get("backend_version") != ort.__version__:
            raise pb_utils.TritonModelException(
                f"the engine was built with ONNX Runtime {manifest.get('backend_version')}, the server has "
                f"{ort.__version__}; install that version in the server's Python environment")
        session = manifest.get("session") or {}
        options = ort.SessionOptions()  # the settings of engines/onnxruntime.py session_options
        options.graph_optimization_level = LEVELS[session.get("load_optimization_level", "all")]
        options.intra_op_num_threads = session.get("threads", 0)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = manifest["input"]["name"], manifest["output"]["name"]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        out = self.session.run([self.output_name], {self.input_name: np.concatenate(arrays)})[0]
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(out[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses

    def finalize(self):
        self.session = None
