"""Render metric samples in the Prometheus text exposition format (version 0.0.4).

``prometheus_client`` is not a dependency; the format is small enough to write directly:
one ``# HELP`` and ``# TYPE`` line per metric family, then one ``name{labels} value`` line per
sample, families contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tomolock.service.api.models import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """Format a sample value the way Prometheus expects (``NaN``, ``+Inf``, ``-Inf``).

    Parameters
    ----------
    value : float
        Sample value.

    Returns
    -------
    str
        Shortest round-tripping representation; integral values without a decimal point.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render(metrics: Iterable[Metric]) -> str:
    """Render samples as Prometheus text, grouping samples of one family together.

    Parameters
    ----------
    metrics : iterable of Metric
        Samples; samples sharing ``name`` form one family and must agree on ``type``. The
        first sample's ``help`` is used.

    Returns
    -------
    str
        The exposition text, ending with a newline (empty string for no samples).

    Raises
    ------
    ValueError
        If samples of one family disagree on type, or a sample (name, suffix, labels) repeats.
    """
    families: dict[str, list[Metric]] = {}
    for metric in metrics:
        family = families.setdefault(metric.name, [])
        if family and family[0].type != metric.type:
            raise ValueError(
                f"metric {metric.name!r} given as both {family[0].type} and {metric.type}"
            )
        family.append(metric)

    lines: list[str] = []
    for name, samples in families.items():
        lines.append(f"# HELP {name} {_escape_help(samples[0].help)}")
        lines.append(f"# TYPE {name} {samples[0].type}")
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for sample in samples:
            key = (sample.suffix, tuple(sorted(sample.labels.items())))
            if key in seen:
                raise ValueError(f"duplicate sample {name}{sample.suffix} {dict(key[1])}")
            seen.add(key)
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
            label_text = f"{{{labels}}}" if labels else ""
            lines.append(f"{name}{sample.suffix}{label_text} {format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""
