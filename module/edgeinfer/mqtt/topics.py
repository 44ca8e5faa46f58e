"""Output topic templates: ``{topic}``, ``{1}``, ``{2}``, ... and ``{module_id}``."""

from __future__ import annotations


class OutputTopics:
    """Renders the output topic for an input topic, caching the answer per topic."""

    _CACHE_LIMIT = 10_000

    def __init__(self, template: str, module_id: str) -> None:
        self._template = template
        self._module_id = module_id
        self._cache: dict[str, str] = {}

    def render(self, topic: str) -> str:
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        levels = topic.split("/")
        values = {str(i): level for i, level in enumerate(levels, start=1)}
        values.update(topic=topic, module_id=self._module_id)
        try:
            rendered = self._template.format_map(values)
        except (KeyError, IndexError):
            # The template names a level this topic lacks ({3} of "a/b"):
            # fall back to the whole topic rather than lose the result.
            rendered = self._template.format_map(_Blank(values))
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = rendered
        return rendered


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "_"
