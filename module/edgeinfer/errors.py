"""The one exception tree of edgeinfer.

::

    EdgeInferError
    ├── ConfigError          bad command line, environment or TOML value (exit code 2)
    ├── MissingExtraError    a command needs an optional extra that is not installed (exit 2)
    ├── ModelError           a model file that cannot be recognised or loaded
    ├── ReadingError         one reading rejected; reported on the errors topic
    └── UpdateError          an update refused or failed (desired state, download,
                             verification, self-test, store); reported as ``failed``

Errors raised by outside libraries (onnxruntime, LiteRT, paho, orjson) are
translated into these at the boundary, and every message quotes the bad value
and says what was expected.
"""

from __future__ import annotations


class EdgeInferError(Exception):
    """Base class of every error edgeinfer raises on purpose."""


class ConfigError(EdgeInferError):
    """A configuration value is missing or invalid.

    Attributes:
        key: the dotted key (``pipeline.max_batch``) or flag that is wrong.
        value: the value as given.
        expected: what would have been accepted.
    """

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key} = {value!r}: expected {expected}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, object, str]]:
        # Picklable with its own arguments: benchmark workers send it back.
        return (ConfigError, (self.key, self.value, self.expected))


class MissingExtraError(EdgeInferError):
    """A command needs an optional dependency group (``pip install 'edgeinfer[tools]'``)."""

    def __init__(self, command: str, extra: str, missing: str) -> None:
        self.command = command
        self.extra = extra
        super().__init__(
            f"{command} needs the {extra} extra ({missing} is not installed): "
            f"pip install 'edgeinfer[{extra}]'"
        )


class ModelError(EdgeInferError):
    """A model file cannot be recognised, loaded or run."""


class ReadingError(EdgeInferError):
    """One reading is rejected.

    Attributes:
        code: a short, stable machine-readable cause (``wrong_shape``,
            ``bad_json``, ...); it becomes the ``error`` field of the report
            and the ``reason`` label of the errors metric.
        reason: the human explanation, naming what was expected.
        rid: the reading's ``id`` when the payload got far enough to have one.
    """

    def __init__(self, code: str, reason: str, rid: object = None) -> None:
        self.code = code
        self.reason = reason
        self.rid = rid
        super().__init__(f"{code}: {reason}")

    def __reduce__(self) -> tuple[type[ReadingError], tuple[str, str, object]]:
        return (ReadingError, (self.code, self.reason, self.rid))

    @classmethod
    def internal(cls, rid: object = None) -> ReadingError:
        """The module itself failed on the reading (a bug): the report points at the log."""
        return cls("internal_error", "the module failed to answer this reading; see its log", rid)


class UpdateError(EdgeInferError):
    """An over-the-air update is refused or failed; the message goes into the report."""


class StreamsDealtOutError(UpdateError):
    """A model with windows or per-stream state on inputs the broker deals out to replicas.

    A conflict with the configuration, not a defect of the model: at start it is a
    configuration error (the version is not marked failed), in an update a refusal.
    """
