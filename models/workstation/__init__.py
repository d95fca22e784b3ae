"""Workstation tooling for maeday-edge: the MAE definition, mask schedules, the Eq. 1
reference, and the ONNX exporter that writes the graph contract of `models/README.md`."""
