"""Compression passes over the IR: clean-up, quantization, calibration.

Passes import the IR and libraries, never a frontend or a backend. Anything that must run a
model (calibration) receives an executor through a small protocol.
"""
