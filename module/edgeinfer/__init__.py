"""edgeinfer: an event-driven edge inference module for IoT gateways.

MQTT readings in, ONNX Runtime or TFLite inference, results out; docs/reference.md is the reference.
"""

__version__ = "0.1.0"
