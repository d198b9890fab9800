"""What the report's floor section repeats from preprocessing: the data's warnings (a one-song or
short dev split, dropped files, bandwidth) and the optimizer steps an epoch each group's batch size
gives (``dataset.adequacy``), so a reader of the figures sees what every number rests on."""
from __future__ import annotations

import html

from gruv_hpc.dataset.adequacy import data_warnings
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.errors import GruvError


def data_warnings_of(runs) -> list[str]:
    """The warnings of every dataset the runs trained on, and of each (artists, batch_size) they
    trained with, once each; a dataset that cannot be read is named instead."""
    by_data: dict[str, set] = {}
    for r in runs:
        by_data.setdefault(str(r.config.get("data")), set()).add(
            (tuple(r.config.get("artists") or ()), int(r.config.get("batch_size") or 1)))
    out: list[str] = []
    for data, batches in sorted(by_data.items()):
        try:
            m = load_manifest(data)
        except (GruvError, OSError) as e:
            out.append(f"{data}: its warnings could not be read: {e}")
            continue
        out += [w for w in data_warnings(m, [(list(a), b) for a, b in sorted(batches)], "the runs' ")
                if w not in out]
    return out


def data_notes_html(runs) -> str:
    lines = data_warnings_of(runs)
    if not lines:
        return ""
    return ("<p class='bad'>What these numbers rest on (the data's warnings, as <code>gruv preprocess</code> and "
            "<code>gruv dataset info</code> print them):</p><ul>"
            + "".join(f"<li class='bad'>{html.escape(w)}</li>" for w in lines) + "</ul>")
