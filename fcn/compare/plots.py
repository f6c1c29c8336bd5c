"""The comparison's plots: mean IU curves of the best runs, their per-class IU side by side
in the classes' own colours."""

from __future__ import annotations

import io

from fcn import tracking
from fcn.compare.rows import RunRow
from fcn.engine.classes import VOC_CLASSES, ClassList, voc_colormap
from fcn.engine.metrics import CLASS_METRIC_PREFIX, class_metric


def class_order(keys) -> list[str]:
    """Class names of `iu_<name>` metric keys: VOC order where the names are VOC classes (the
    paper's tables), then the rest A-Z."""
    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    names = {k[len(CLASS_METRIC_PREFIX) :] for k in keys}
    # Unnamed class sets log iu_0, iu_1, ...: numeric order, not 0, 1, 10, 2.
    return sorted(names, key=lambda n: (index.get(n, len(index)), not n.isdigit(), _num(n), n))


def _num(name: str) -> int:
    return int(name) if name.isdigit() else 0


def plot_classes(recorded: list[dict | None], keys) -> ClassList:
    """Names and colours for the per-class plot.

    `recorded`: the class lists the runs logged (`classes.json`; None for a run that logged
    none), best run first; the first one found gives names, order and colours. Classes that
    only other runs measured (`keys`: their `iu_<name>` metrics) follow; a class without a
    recorded colour gets the VOC colour of its VOC index (or its number, for classes named
    "0", "1", ...), as the masks of a model without a class list are painted.
    """
    base = next((ClassList.from_dict(c) for c in recorded if c), None)
    names = list(base.names) if base else []
    colors = list(base.colors) if base else []
    known = {class_metric(n) for n in names}
    voc = {name: i for i, name in enumerate(VOC_CLASSES)}
    cmap = voc_colormap()
    for name in class_order(k for k in keys if k not in known):
        names.append(name)
        index = voc.get(name, _num(name) if name.isdigit() else len(names) - 1)
        colors.append(tuple(int(v) for v in cmap[min(index, len(cmap) - 1)]))
    return ClassList(tuple(names), tuple(colors))


def per_class_at_best(row: RunRow, curve: list[tuple[int, float]], uri=None) -> dict[str, float]:
    """Metric key -> per-class IU at the evaluation with the highest mean IU (the checkpoint
    kept as best); the latest values where the histories do not line up."""
    best_step = max(curve, key=lambda sv: sv[1])[0] if curve else None
    values = {}
    for key in row.class_metrics:
        history = dict(tracking.metric_history(row.run_id, key, uri))
        values[key] = history.get(best_step, history[max(history)])
    return values


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    figure = _figure((8, 5))
    axes = figure.add_subplot()
    for label, curve in curves.items():
        if curve:
            steps, values = zip(*curve, strict=True)
            axes.plot(steps, values, marker="o", markersize=3, label=label)
    axes.set_xlabel("iteration")
    axes.set_ylabel("mean IU (val)")
    axes.set_title("Mean IU during training, best runs")
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    return _png(figure)


# Runs side by side are told apart by hatching: the bar colours are the classes' own.
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo")


def plot_per_class(per_class: dict[str, dict[str, float]], classes: ClassList) -> bytes:
    """Bars of each class in its colour, one hatching per run (`per_class`: run label ->
    metric key -> IU)."""
    from matplotlib.patches import Patch

    count = classes.num_classes
    figure = _figure((max(8, 0.6 * count + 2), 5))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(per_class))
    keys = [class_metric(name) for name in classes.names]
    colors = [tuple(v / 255 for v in rgb) for rgb in classes.colors]
    legend = []
    for i, (label, values) in enumerate(per_class.items()):
        hatch = HATCHES[i % len(HATCHES)]
        xs = [c + i * width for c in range(count)]
        heights = [values.get(key, 0.0) for key in keys]
        axes.bar(xs, heights, width=width, color=colors, edgecolor="0.5", hatch=hatch)
        legend.append(Patch(facecolor="white", edgecolor="0.3", hatch=hatch, label=label))
    axes.set_xticks([c + 0.4 - width / 2 for c in range(count)])
    axes.set_xticklabels(classes.names, rotation=60, ha="right", fontsize="small")
    axes.set_ylabel("IU (val, best evaluation)")
    top = max((v for values in per_class.values() for v in values.values() if v == v), default=1)
    axes.set_ylim(0, max(1.0, top * 1.05))  # fractions as the contract logs them; % also fit
    axes.set_title("Per-class IU, best runs side by side")
    if legend:
        axes.legend(handles=legend, fontsize="small")
    figure.tight_layout()
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
