"""Frontends lift a framework's model into the IR (an ONNX-based ``onnx_ir.Model``).

Each frontend is a module with one ``lift_*`` function; the compiler picks one from the spec.
"""
