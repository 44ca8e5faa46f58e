"""edgeinfer: an event-driven edge inference module for IoT gateways.

MQTT readings in, ONNX Runtime or TFLite inference, results out; see SPEC.md.
"""

__version__ = "0.1.0"
