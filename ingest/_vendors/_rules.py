"""The rule engine: where one field's value is in a vendor's metadata tree, in which unit, and
what the vendor's quirks make of it (inferred units, placeholder zeros, rounding)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingest._acquisition import NormalizedField, Quality
from ingest._errors import UnknownField
from ingest._vendors._json import json_safe
from ingest._vendors._quantities import convert, number, parse_text_quantity, pint_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Where one field's value is in a vendor tree, and how to read it.

    Attributes:
        name: the state or instrument field.
        path: key path in the tree; a ``str`` with ``.`` separators.
        unit: unit of the stored value (pint syntax); ``None`` for text; ``"text"`` when the
            value is text with its own unit (``"0.0 nm"``, ``"100.00 msec"``).
        inferred: when the file does not state ``unit``: how it was inferred (the field is
            then ``unit_ambiguous`` unless ``confirm`` agrees).
        confirm: a key holding the same value as formatted text with a unit (``"200kV"``);
            when it agrees, the inferred unit counts as stated.
        zero_is_placeholder: a zero means "unknown".
        rounded: the vendor writes the value rounded; the note (``-0.0``, a value rounded from
            a small negative one, is flagged for any numeric field).
        sign: factor applied to the value (defocus conventions).
        text_map: text values translated (``{"1": "TEM"}``).
        note: said about the field whatever its quality.
    """

    name: str
    path: str
    unit: str | None
    inferred: str | None = None
    confirm: str | None = None
    zero_is_placeholder: bool = False
    rounded: str | None = None
    sign: float = 1.0
    text_map: Mapping[str, str] | None = None
    note: str | None = None


MISSING = object()

#: Fields whose every reading is positive: a vendor's -1 there means "not known".
POSITIVE_FIELDS = frozenset(
    {
        "high_tension",
        "beam_energy",
        "extraction_voltage",
        "emission_current",
        "probe_current",
        "screen_current",
        "spot_size",
        "convergence_semiangle",
        "magnification",
        "camera_length",
        "dwell_time",
        "exposure_time",
        "frame_count",
        "pixel_size",
        "reciprocal_pixel_size",
        "holder_pressure",
    }
)
#: Text vendors write when they do not know a value (compared in lower case).
TEXT_SENTINELS = frozenset({"unknown", "n/a", "na", "none", "null", "-1", "undefined"})
_TEXT_SENTINEL_NOTE = "the vendor's text for a value it does not know"


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``tree`` (``MISSING`` when absent or empty)."""
    node: Any = tree
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    if node is None or (isinstance(node, str | list | tuple | Mapping) and len(node) == 0):
        return MISSING
    if isinstance(node, str) and not node.strip():
        return MISSING
    return node


def apply_rule(
    tree: Mapping[str, Any], rule: Rule, canonical: str | None
) -> NormalizedField | None:
    """The field ``rule`` finds in ``tree`` (``None`` when absent or not a number)."""
    raw = lookup(tree, rule.path)
    if raw is MISSING:
        return None
    raw_json = json_safe(raw)
    if canonical is None:  # a text field
        text = str(raw_json).strip()
        if rule.text_map is not None:
            text = rule.text_map.get(text, text)
        unknown = text.lower() in TEXT_SENTINELS
        return NormalizedField(
            value=text,
            unit=None,
            source=rule.path,
            source_value=raw_json,
            quality=Quality.PLACEHOLDER if unknown else Quality.OK,
            note="; ".join(filter(None, [rule.note, _TEXT_SENTINEL_NOTE if unknown else None]))
            or None,
        )
    try:
        if rule.unit == "text":
            read, unit = parse_text_quantity(str(raw))
        else:
            read, unit = number(raw), rule.unit or "1"
        value = convert(read, unit, canonical) * rule.sign
    except Exception as exc:  # a vendor value that is not a number: skip the field
        log.debug("cannot read %s = %r as a number: %s", rule.path, raw, exc)
        return None
    if not math.isfinite(value):
        return None
    quality, notes = _quality(tree, rule, read, unit)
    return NormalizedField(
        value=0.0 if value == 0.0 else value,  # no signed zeros: the marker says what it was
        unit=canonical,
        source=rule.path,
        source_value=raw_json,
        source_unit=unit,
        quality=quality,
        note="; ".join(notes) or None,
    )


def _quality(
    tree: Mapping[str, Any], rule: Rule, read: float, unit: str
) -> tuple[Quality, list[str]]:
    """The quality of ``read`` [``unit``] found by ``rule``, and the notes saying why."""
    notes = [rule.note] if rule.note else []
    quality = Quality.OK
    if rule.inferred:
        confirmed = _confirmed(tree, rule, read, unit)
        if confirmed:
            notes.append(confirmed)
        else:
            quality = Quality.UNIT_AMBIGUOUS
            notes.append(f"unit not stated in the file; {rule.inferred}")
    negative_zero = read == 0.0 and math.copysign(1.0, read) < 0
    if read == 0.0 and rule.zero_is_placeholder:
        quality = Quality.PLACEHOLDER
        notes.append("the vendor writes 0 when the value is unknown")
    elif read == -1.0 and rule.name in POSITIVE_FIELDS:
        quality = Quality.PLACEHOLDER
        notes.append(f"the vendor writes -1 when the value is unknown (a {rule.name} is > 0)")
    elif negative_zero or rule.rounded:
        if quality is Quality.OK:
            quality = Quality.ROUNDED
        if negative_zero:
            notes.append("-0: a small negative value rounded by the vendor")
        if rule.rounded:
            notes.append(rule.rounded)
    return quality, notes


def _confirmed(tree: Mapping[str, Any], rule: Rule, read: float, unit: str) -> str | None:
    if rule.confirm is None:
        return None
    text = lookup(tree, rule.confirm)
    if text is MISSING:
        return None
    try:
        other, other_unit = parse_text_quantity(str(text))
        mine = convert(read, unit, pint_unit(other_unit))
    except Exception:
        return None
    if math.isclose(mine, other, rel_tol=0.01, abs_tol=1e-12):
        return f"unit {unit} confirmed by {rule.confirm} = {text!r}"
    return None


_QUALITY_RANK = {
    Quality.OK: 0,
    Quality.ROUNDED: 1,
    Quality.UNIT_AMBIGUOUS: 2,
    Quality.DISCONNECTED_DEFAULT: 3,
    Quality.PLACEHOLDER: 4,
}


def normalize(
    tree: Mapping[str, Any],
    rules: Sequence[Rule],
    table: Mapping[str, tuple[str | None, str]],
) -> dict[str, NormalizedField]:
    """Apply ``rules`` to ``tree``; where several rules give a field, the best quality wins
    (then the first rule)."""
    candidates: dict[str, list[NormalizedField]] = {}
    for rule in rules:
        if rule.name not in table:
            raise UnknownField(f"rule for unknown field {rule.name!r}")
        found = apply_rule(tree, rule, table[rule.name][0])
        if found is not None:
            candidates.setdefault(rule.name, []).append(found)
    return {
        name: min(found, key=lambda f: _QUALITY_RANK[f.quality])
        for name, found in candidates.items()
    }


def normalize_with_units(
    tree: dict[str, Any],
    rules: Sequence[Rule],
    table: Mapping[str, tuple[str | None, str]],
    units: Mapping[str, str],
) -> dict[str, NormalizedField]:
    """:func:`normalize` where some values' units sit in another key beside them: ``units``
    maps a value's path to its unit; the rules for those paths read ``"text"`` (the value and
    its unit joined), and the fields keep the verbatim value as ``source_value``."""
    joined = tree
    for path, unit in units.items():
        value = lookup(tree, path)
        if value is not MISSING:
            joined = with_value(joined, path, f"{value} {unit}")
    found = normalize(joined, rules, table)
    for name, f in found.items():
        if f.source in units:
            found[name] = f.model_copy(update={"source_value": json_safe(lookup(tree, f.source))})
    return found


def both_energies(path: str, unit: str, **kw: Any) -> list[Rule]:
    """``high_tension`` [V] and ``beam_energy`` [eV] from the same key."""
    return [Rule("high_tension", path, unit, **kw), Rule("beam_energy", path, unit, **kw)]


def constant(value: str, source: str) -> NormalizedField:
    """A text field the file format itself implies (``Gatan DigitalMicrograph``)."""
    return NormalizedField(
        value=value,
        unit=None,
        source=source,
        source_value=None,
        quality=Quality.OK,
        note="implied by the file format",
    )


def with_value(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``path`` set to ``value`` (copies only the nodes on the path)."""
    parts = path.split(".")
    out = dict(tree)
    node = out
    for part in parts[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    node[parts[-1]] = value
    return out


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in ``tree`` in place, making the missing nodes."""
    node = tree
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value
