"""``edgeinfer status``: a module's reported state as tables for people (``--json``: as is)."""

from __future__ import annotations

from typing import Any

from edgeinfer.updates.rollouts.spec import GATES


def render(doc: dict[str, Any]) -> str:
    """The reported state as text: the model, the update, versions, and a rollout's figures."""
    model = doc.get("model") or {}
    update = doc.get("update") or {}
    target = update.get("target") or {}
    lines = [
        f"module    {doc.get('module_id')}",
        f"model     {model.get('name')} {model.get('version')} ({model.get('runtime')}), "
        f"activated {model.get('activated_at')}",
        f"update    {update.get('state')}"
        + (f"  {target.get('name')} {target.get('version')}" if target else "")
        + (f"  error: {update['error']}" if update.get("error") else ""),
    ]
    versions = [
        f"{v['name']} {v['version']}"
        + (" (current)" if v.get("current") else "")
        + (" (previous)" if v.get("previous") else "")
        for v in doc.get("versions") or []
    ]
    lines.append(f"versions  {', '.join(versions) or '-'}")
    rollout = doc.get("rollout")
    if rollout:
        lines += ["", *_rollout(rollout)]
    return "\n".join(lines)


def _rollout(r: dict[str, Any]) -> list[str]:
    steps = r.get("steps") or []
    where = f"step {r['step'] + 1}/{len(steps)}, " if steps else ""
    candidate = r.get("candidate") or {}
    lines = [
        f"rollout   {r['mode']} of {candidate.get('name')} {candidate.get('version')}: "
        f"{where}{r['percent']:g}%, verdict {r['verdict']}"
        + (" (resumed after a restart)" if r.get("resumed") else ""),
    ]
    if r.get("reason"):
        lines.append(f"          {r['reason']}")
    lines.append("")
    lines.append(_row(("version", "answered", "errors", "non-finite", "p95 ms")))
    for version, c in (r.get("counts") or {}).items():
        lines.append(
            _row(
                (
                    version,
                    c.get("answered"),
                    c.get("errors"),
                    c.get("non_finite", "-"),
                    c.get("p95_ms"),
                )
            )
        )
    agreement = r.get("agreement")
    lines += [
        "",
        f"compared  {r['compared']} of {r['min_samples']} before a verdict"
        + (f", top-1 agreement {agreement:.3f}" if agreement is not None else "")
        + f", mirrored runs skipped {r.get('mirror_skipped', 0)}",
        "",
        _row(("gate", "value", "limit", "")),
    ]
    for gate, g in (r.get("gates") or {}).items():
        value, limit = g.get("value"), g.get("limit")
        ok = "" if value is None else ("ok" if _passes(gate, value, limit) else "FAILS")
        lines.append(_row((gate, value, limit, ok)))
    return lines


def _passes(gate: str, value: float, limit: float) -> bool:
    above_fails = GATES.get(gate, (0.0, True))[1]
    return value <= limit if above_fails else value >= limit


def _row(cells: tuple[Any, ...]) -> str:
    shown = ["-" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells]
    first, *rest = shown
    return f"  {first:<22}" + "".join(f"{c:>12}" for c in rest)
