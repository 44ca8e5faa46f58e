"""MQTT topics: the output template, the module's own topics, topic filters.

An output template may use ``{topic}`` (the whole input topic), ``{1}``,
``{2}``, ... (its levels, counted from 1) and ``{module_id}``. It is parsed once
by :meth:`TopicTemplate.parse`, and that one object both validates the
configuration and renders topics, so the two cannot drift apart.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

#: MQTT encodes a topic's length in two bytes.
MAX_TOPIC_BYTES = 65_535
_NAMED = ("topic", "module_id")


def module_topic(module_id: str, leaf: str) -> str:
    """``edgeinfer/{module_id}/{leaf}``: the module's own topics (desired, reported, ...)."""
    return f"edgeinfer/{module_id}/{leaf}"


#: MQTT 5 shared subscriptions: ``$share/<group>/<filter>``.
SHARE_PREFIX = "$share/"


def is_shared(flt: str) -> bool:
    """True for a shared subscription's filter (the broker deals its messages out)."""
    return flt.startswith(SHARE_PREFIX)


def dealt_out(filters: list[str], shared_by_topic: bool) -> str:
    """Why one topic's readings may be split among replicas ("" when they are not).

    mosquitto deals a shared subscription's messages round-robin, whatever their
    topic: a stream's samples then reach several replicas, each with part of its
    window and its own state. Brokers that hash by topic keep a topic on one.
    """
    shared = [flt for flt in filters if is_shared(flt)]
    if not shared or shared_by_topic:
        return ""
    return (
        f"topics.inputs has the shared subscription {shared[0]!r}, whose readings the broker "
        "deals out across replicas regardless of topic (set topics.shared_by_topic = true "
        "only if the broker keeps each topic on one replica, as EMQX's hash_topic does)"
    )


def valid_filter(flt: str) -> bool:
    """True for a topic filter where ``#`` is last and wildcards fill whole levels.

    A shared subscription's group name must be a plain level (no wildcards).
    """
    if is_shared(flt):
        _, group, rest = [*flt.split("/", 2), "", ""][:3]
        return bool(group) and not set(group) & {"+", "#"} and valid_filter(rest)
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return bool(flt)


class TemplatePlaceholderError(ValueError):
    """A template names a placeholder other than {topic}, {module_id}, {1}, {2}, ..."""


class TopicTooLongError(ValueError):
    """A rendered topic longer than MQTT allows."""


@dataclass(frozen=True)
class _Field:
    name: str  # "topic", "module_id", or a level number as text


class TopicTemplate:
    """A parsed output template; :meth:`render` maps an input topic to its output topic."""

    _CACHE_LIMIT = 10_000

    def __init__(self, text: str, parts: tuple[str | _Field, ...]) -> None:
        self.text = text
        self._parts = parts
        self._cache: dict[tuple[str, str], str] = {}

    @classmethod
    def parse(cls, text: str) -> TopicTemplate:
        """Parse ``text``; raises ValueError saying which placeholder is not allowed."""
        if not text:
            raise ValueError("an empty template: expected e.g. inference/{topic}")
        if "#" in text or "+" in text:
            raise ValueError("a wildcard ('#' or '+'): a template renders one concrete topic")
        parts: list[str | _Field] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:  # "Single '}' encountered", unbalanced braces
            raise ValueError(f"unbalanced braces ({exc})") from None
        for literal, name, spec, conversion in parsed:
            if literal:
                parts.append(literal)
            if name is None:
                continue
            if spec or conversion:
                raise ValueError(f"a format spec or conversion in {{{name}}}: expected plain names")
            if name not in _NAMED and not (name.isdigit() and int(name) >= 1):
                allowed = "{topic}, {module_id}, {1}, {2}, ..."
                raise TemplatePlaceholderError(f"the placeholder {{{name}}}: expected {allowed}")
            parts.append(_Field(name))
        return cls(text, tuple(parts))

    @property
    def max_level(self) -> int:
        """The highest ``{N}`` the template uses (0 when none)."""
        return max(
            (int(p.name) for p in self._parts if isinstance(p, _Field) and p.name.isdigit()),
            default=0,
        )

    def render(self, topic: str, module_id: str) -> str:
        """The output topic for ``topic``.

        A level the topic lacks (``{3}`` of ``a/b``) renders as ``_``, so the
        result still has a topic; :data:`MAX_TOPIC_BYTES` is enforced with
        :class:`TopicTooLongError`.
        """
        key = (topic, module_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        levels = topic.split("/")
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif part.name == "topic":
                out.append(topic)
            elif part.name == "module_id":
                out.append(module_id)
            else:
                index = int(part.name) - 1
                out.append(levels[index] if index < len(levels) else "_")
        rendered = "".join(out)
        size = len(rendered.encode())
        if size > MAX_TOPIC_BYTES:
            raise TopicTooLongError(
                f"the output topic for this input topic is {size} bytes: "
                f"expected at most {MAX_TOPIC_BYTES} (MQTT's limit)"
            )
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = rendered
        return rendered

    def __repr__(self) -> str:
        return f"TopicTemplate({self.text!r})"
