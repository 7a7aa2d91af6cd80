"""Metrics of EPNG: Average Recall for Panoptic Narrative Grounding, and the referring segmentation metrics.

* PNG: every grounded phrase gets the IoU of its predicted and ground-truth masks; the score is
  the Average Recall (AR) of the recall–IoU curve, reported for all phrases and the thing / stuff / singular /
  plural subsets. [`average_recall`] follows the reference definition exactly; [`PhraseIouAccumulator`]
  collects per-phrase IoUs batch by batch (never masks), gathers them across processes and writes the
  per-phrase CSV and the recall–IoU plot.
* Referring expression segmentation (zero-shot, paper table 4): [`res_metrics`] / [`SentenceIouAccumulator`] give mean
  IoU over sentences, precision at IoU 0.3 / 0.4 / 0.5 and overall (cumulative) IoU.

The same AR is available as an `evaluate` module: `evaluate.load(PNG_AVERAGE_RECALL_PATH)`.

Convention for empty masks: when a prediction and its ground truth are both empty, IoU is 1 (they agree
perfectly); everywhere else IoU = |pred ∩ gt| / |pred ∪ gt|.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .markdown import markdown_table

# Folder of the `evaluate` module; `evaluate.load(PNG_AVERAGE_RECALL_PATH)` loads it offline.
PNG_AVERAGE_RECALL_PATH = str(Path(__file__).with_name("png_average_recall"))

# Thresholds of the reference AR definition: 0, 1e-5, ..., 1 - 1e-5 (built with numpy.arange exactly as the
# reference does, so that the float values, and hence every comparison IoU >= t, are identical).
AR_THRESHOLDS = np.arange(0, 1, 1e-5)


class ArSubset(NamedTuple):
    """A group of phrases that AR is reported for."""

    name: str  # key of the results (`all`, `num_all`, `eval_ar_all`)
    title: str  # column title in the paper's table 1
    select: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (is_thing, is_plural) bool arrays -> phrases in the subset


# The subsets in the column order of the paper's table 1.
AR_SUBSETS = (
    ArSubset("all", "All", lambda is_thing, is_plural: np.ones_like(is_thing)),
    ArSubset("thing", "Thing", lambda is_thing, is_plural: is_thing),
    ArSubset("stuff", "Stuff", lambda is_thing, is_plural: ~is_thing),
    ArSubset("singular", "Single", lambda is_thing, is_plural: ~is_plural),
    ArSubset("plural", "Plural", lambda is_thing, is_plural: is_plural),
)
RES_PRECISION_THRESHOLDS = (0.3, 0.4, 0.5)


def _to_numpy(values: Any, dtype: Any) -> np.ndarray:
    """Any 1-D sequence, numpy array or (possibly CUDA) tensor → 1-D numpy array of `dtype`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence, got shape {array.shape}")
    return array


def _to_list(values: Any) -> list:
    """Tensor / array / sequence → list of Python scalars (picklable, hashable keys)."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.tolist()
    return list(values)


def _check_ious(ious: Any) -> np.ndarray:
    ious = _to_numpy(ious, np.float64)
    if not np.all((ious >= 0) & (ious <= 1)):  # also rejects NaN
        raise ValueError("IoUs must lie in [0, 1] (NaN is not allowed)")
    return ious


# ----------------------------------------------------------------------------------------------------------------
# Average Recall (PNG)
# ----------------------------------------------------------------------------------------------------------------
def recall_curve(
    ious: Sequence[float] | np.ndarray | torch.Tensor, thresholds: np.ndarray = AR_THRESHOLDS
) -> np.ndarray:
    """
    Recall at each IoU threshold: the fraction of phrases whose IoU is ≥ the threshold.

    Args:
        ious (`Sequence[float]`, `np.ndarray` or `torch.Tensor` of shape `(N,)`): per-phrase IoUs in [0, 1], N ≥ 1.
        thresholds (`np.ndarray` of shape `(T,)`, defaults to [`AR_THRESHOLDS`]): IoU thresholds.

    Returns:
        `np.ndarray` of shape `(T,)`, float64: recall in [0, 1] per threshold.
    """
    ious = _check_ious(ious)
    if ious.size == 0:
        raise ValueError("recall is undefined without phrases: got an empty list of IoUs")
    # Sorting once and counting with a binary search gives the same counts as comparing every IoU with
    # every threshold, in O((N + T) log N) instead of an N x T matrix.
    num_below = np.searchsorted(np.sort(ious), thresholds, side="left")
    return (ious.size - num_below) / ious.size


def average_recall(ious: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """
    Average Recall of the PNG benchmark, as a fraction in [0, 1].

    With t = `numpy.arange(0, 1, 1e-5)` and recall(t) = fraction of phrases with IoU ≥ t,
    AR = Σ_{i=0}^{n−2} (t[i+1] − t[i]) · recall(t[i]). Equal to the brute-force evaluation of that formula.

    Args:
        ious (`Sequence[float]`, `np.ndarray` or `torch.Tensor` of shape `(N,)`): per-phrase IoUs in [0, 1].

    Returns:
        `float`: AR in [0, 1] (multiply by 100 for the paper's percent).

    Raises:
        `ValueError`: if `ious` is empty (AR of no phrases is undefined), not 1-D, or has values outside [0, 1].
    """
    recall = recall_curve(ious, AR_THRESHOLDS)
    return float(np.sum(np.diff(AR_THRESHOLDS) * recall[:-1]))


def average_recall_table(
    ious: Sequence[float] | np.ndarray | torch.Tensor,
    is_thing: Sequence[bool] | np.ndarray | torch.Tensor,
    is_plural: Sequence[bool] | np.ndarray | torch.Tensor,
) -> dict[str, float | int]:
    """
    AR overall and per subset, in percent (the layout of the paper's table 1: All / Thing / Stuff / Single / Plural).

    Args:
        ious (shape `(N,)`, float): per-phrase IoUs in [0, 1], N ≥ 1.
        is_thing (shape `(N,)`, bool): True for "thing" phrases, False for "stuff".
        is_plural (shape `(N,)`, bool): True for plural phrases, False for singular.

    Returns:
        `dict`: `all`, `thing`, `stuff`, `singular`, `plural` → AR in percent (`nan` for a subset without phrases),
        and `num_all`, `num_thing`, `num_stuff`, `num_singular`, `num_plural` → phrase counts (`int`).
    """
    ious = _check_ious(ious)
    is_thing = _to_numpy(is_thing, bool)
    is_plural = _to_numpy(is_plural, bool)
    if not ious.shape == is_thing.shape == is_plural.shape:
        raise ValueError(
            "ious, is_thing and is_plural must have the same length, "
            f"got {ious.size}, {is_thing.size}, {is_plural.size}"
        )
    if ious.size == 0:
        raise ValueError("AR is undefined without phrases: got an empty list of IoUs")
    selected = {subset.name: subset.select(is_thing, is_plural) for subset in AR_SUBSETS}
    table: dict[str, float | int] = {
        name: 100.0 * average_recall(ious[mask]) if mask.any() else float("nan") for name, mask in selected.items()
    }
    table.update({f"num_{name}": int(mask.sum()) for name, mask in selected.items()})
    return table


def _results_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A results table: row labels on the left, numbers right-aligned."""
    return markdown_table(header, rows, right_aligned=[False] + [True] * (len(header) - 1))


def format_average_recall_table(
    rows: Mapping[str, Mapping[str, float]], decimals: int = 1, show_counts: bool = True
) -> str:
    """
    Format one or several AR tables side by side, e.g. `{"untrained": table_a, "trained": table_b}`.

    Args:
        rows (`Mapping[str, Mapping[str, float]]`): row label → output of [`average_recall_table`].
        decimals (`int`, defaults to 1): digits after the decimal point.
        show_counts (`bool`, defaults to `True`): add the phrase count of each subset: one row when all tables
            share the counts (the usual case: several models on one evaluation set), else one row per table.

    Returns:
        `str`: a Markdown table with columns Model | All | Thing | Stuff | Single | Plural.
    """
    if not rows:
        raise ValueError("nothing to format: `rows` is empty")
    body = [[label, *(f"{table[subset.name]:.{decimals}f}" for subset in AR_SUBSETS)] for label, table in rows.items()]
    if show_counts:
        counts = {label: [str(table[f"num_{subset.name}"]) for subset in AR_SUBSETS] for label, table in rows.items()}
        if len({tuple(row) for row in counts.values()}) == 1:
            body.append(["(phrases)", *next(iter(counts.values()))])
        else:
            body.extend([f"(phrases) {label}", *row] for label, row in counts.items())
    return _results_table(["Model", *(subset.title for subset in AR_SUBSETS)], body)


# ----------------------------------------------------------------------------------------------------------------
# Mask IoU
# ----------------------------------------------------------------------------------------------------------------
def mask_intersection_union(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Pixel counts of the intersection and union of binary masks, reduced over the last two (spatial) dimensions.

    Args:
        pred (`torch.BoolTensor` of shape `(..., H, W)`, e.g. `(P, H, W)`): predicted masks.
        gt (`torch.BoolTensor` of the same shape): ground-truth masks.

    Returns:
        `tuple[torch.LongTensor, torch.LongTensor]`, each of shape `(...)`: intersection and union sizes.
    """
    if pred.dtype != torch.bool or gt.dtype != torch.bool:
        raise TypeError(f"masks must be bool tensors (binarise probabilities first), got {pred.dtype} and {gt.dtype}")
    if pred.shape != gt.shape or pred.ndim < 2:
        raise ValueError(
            f"pred and gt must have the same shape (..., H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    intersection = (pred & gt).sum(dim=(-2, -1))
    union = (pred | gt).sum(dim=(-2, -1))
    return intersection, union


def _iou_from_counts(intersection: Any, union: Any) -> Any:
    """IoU = intersection / union, with IoU 1 where the union is empty (both masks empty). Torch or numpy."""
    if isinstance(union, torch.Tensor):
        # float64 like the reference's numpy division: float32 rounding could move an IoU across a 1e-5 AR threshold.
        ratio = intersection.double() / union.clamp(min=1).double()
        return torch.where(union > 0, ratio, torch.ones_like(ratio))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """
    IoU of binary masks. When both masks are empty the IoU is 1 (nothing predicted for nothing is a perfect match).

    Args:
        pred (`torch.BoolTensor` of shape `(P, H, W)`, or any `(..., H, W)`): predicted masks.
        gt (`torch.BoolTensor` of the same shape): ground-truth masks.

    Returns:
        `torch.DoubleTensor` of shape `(P,)` (the leading dimensions): IoU in [0, 1] per mask (float64).
    """
    intersection, union = mask_intersection_union(pred, gt)
    return _iou_from_counts(intersection, union)


# ----------------------------------------------------------------------------------------------------------------
# Streaming accumulators (distributed-safe)
# ----------------------------------------------------------------------------------------------------------------
class _KeyedResults:
    """
    Per-example results keyed by a unique id. A key seen twice keeps its first value: a distributed sampler pads
    the last batches by repeating examples, and those copies must not be counted twice.
    """

    def __init__(self):
        self._results: dict[tuple, tuple] = {}
        self._gathered = False

    def __len__(self) -> int:
        return len(self._results)

    def _add(self, keys: list[tuple], values: list[tuple]) -> None:
        if self._gathered:
            raise RuntimeError("results were already gathered across processes; create a new accumulator to add more")
        for key, value in zip(keys, values, strict=True):
            self._results.setdefault(key, value)

    def gather(self, accelerator_or_gather_fn: Any = None) -> _KeyedResults:
        """
        Collect the results of all processes (once per accumulator); afterwards every process holds all of them.

        Args:
            accelerator_or_gather_fn (`accelerate.Accelerator`, `Callable[[list], list]` or `None`): with an
                `Accelerator` or `None`, `accelerate.utils.gather_object` is used (a no-op in a single process);
                a callable receives this process's list of `(key, value)` pairs and returns the concatenation of
                every process's lists.

        Returns:
            `self`, deduplicated by key.
        """
        if self._gathered:
            raise RuntimeError("gather() may be called only once: a second call would gather gathered results")
        from accelerate import Accelerator
        from accelerate.utils import gather_object

        if accelerator_or_gather_fn is None or isinstance(accelerator_or_gather_fn, Accelerator):
            gather_fn = gather_object
        elif callable(accelerator_or_gather_fn):
            gather_fn = accelerator_or_gather_fn
        else:
            raise TypeError(
                f"expected an accelerate.Accelerator, a gather function or None, got {type(accelerator_or_gather_fn)}"
            )
        gathered = gather_fn(list(self._results.items()))
        self._results = {}
        for key, value in gathered:
            self._results.setdefault(tuple(key), value)
        self._gathered = True
        return self

    def _sorted_items(self) -> list[tuple[tuple, tuple]]:
        # Numbers sort numerically and before strings, so image ids of either type (or both) give one fixed order.
        return sorted(self._results.items(), key=lambda item: tuple((isinstance(part, str), part) for part in item[0]))


class PhraseIouAccumulator(_KeyedResults):
    """
    Streaming collector of per-phrase IoUs for PNG evaluation. Add the IoUs of each batch (masks are never stored),
    call [`~PhraseIouAccumulator.gather`] once after the loop, then read [`~PhraseIouAccumulator.table`] and write
    the CSV / plot on the main process.

    Phrases are keyed by `(image_id, narrative_index, phrase_index)`; a key added twice (sampler padding) counts once.

    Example:
        ```python
        accumulator = PhraseIouAccumulator()
        for batch in dataloader:
            ious = mask_iou(pred_masks, gt_masks)  # (P,)
            accumulator.add(ious, is_thing, is_plural, image_ids, narrative_indices, phrase_indices)
        accumulator.gather(accelerator)
        if accelerator.is_main_process:
            print(format_average_recall_table({"EPNG": accumulator.table()}))
            accumulator.write_csv("phrase_ious.csv")
            accumulator.plot_recall_curves("recall_iou.png")
        ```
    """

    CSV_COLUMNS = ("image_id", "narrative_index", "phrase_index", "iou", "is_thing", "is_plural")

    def add(
        self,
        ious: Sequence[float] | torch.Tensor,
        is_thing: Sequence[bool] | torch.Tensor,
        is_plural: Sequence[bool] | torch.Tensor,
        image_ids: Sequence[int | str] | torch.Tensor,
        narrative_indices: Sequence[int] | torch.Tensor,
        phrase_indices: Sequence[int] | torch.Tensor,
    ) -> None:
        """
        Record the phrases of one batch; every argument has one entry per phrase, shape `(P,)`.

        Args:
            ious: IoU of each phrase in [0, 1] (e.g. from [`mask_iou`]).
            is_thing: True for thing phrases, False for stuff.
            is_plural: True for plural phrases.
            image_ids: image id of each phrase (`int` or `str`).
            narrative_indices: index of the phrase's narrative among the image's narratives.
            phrase_indices: index of the phrase within its narrative.
        """
        ious = _check_ious(ious).tolist()
        columns = [
            ious,
            _to_list(is_thing),
            _to_list(is_plural),
            _to_list(image_ids),
            _to_list(narrative_indices),
            _to_list(phrase_indices),
        ]
        if len({len(column) for column in columns}) != 1:
            raise ValueError(f"all arguments need one entry per phrase, got lengths {[len(c) for c in columns]}")
        iou, thing, plural, image_id, narrative, phrase = columns
        keys = [(i, int(n), int(p)) for i, n, p in zip(image_id, narrative, phrase, strict=True)]
        values = [(float(v), bool(t), bool(pl)) for v, t, pl in zip(iou, thing, plural, strict=True)]
        self._add(keys, values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        The recorded phrases in key order.

        Returns:
            `tuple` of three `np.ndarray` of shape `(N,)`: IoUs (float64), is_thing (bool), is_plural (bool).
        """
        values = [value for _, value in self._sorted_items()]
        ious = np.array([value[0] for value in values], dtype=np.float64)
        is_thing = np.array([value[1] for value in values], dtype=bool)
        is_plural = np.array([value[2] for value in values], dtype=bool)
        return ious, is_thing, is_plural

    def table(self) -> dict[str, float | int]:
        """The [`average_recall_table`] of the recorded phrases (percent + counts)."""
        return average_recall_table(*self.arrays())

    def write_csv(self, path: str | Path) -> Path:
        """Write one row per phrase (columns `CSV_COLUMNS`, sorted by key); parent folders are created."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(self.CSV_COLUMNS)
            for key, value in self._sorted_items():
                writer.writerow([*key, repr(value[0]), *value[1:]])
        return path

    def plot_recall_curves(self, path: str | Path, title: str | None = None) -> Path:
        """
        Save recall vs. IoU threshold for all / thing / stuff / singular / plural phrases as an image (e.g. PNG).

        The figure is drawn with matplotlib's object API on an Agg canvas, so the global pyplot backend of the
        caller is left alone. Subsets without phrases are skipped. The AR in each label is the area under the curve.
        """
        from matplotlib.figure import Figure

        ious, is_thing, is_plural = self.arrays()
        if ious.size == 0:
            raise ValueError("no phrases recorded: nothing to plot")
        thresholds = np.linspace(0.0, 1.0, 501)
        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.add_subplot()
        for subset in AR_SUBSETS:
            selected = ious[subset.select(is_thing, is_plural)]
            if selected.size:
                label = f"{subset.title}: AR {100 * average_recall(selected):.1f} (n={selected.size})"
                # "All" is drawn thick and black so that the subset curves lying on it do not hide it.
                style = (
                    {"color": "black", "linewidth": 2.2, "zorder": 3} if subset.name == "all" else {"linewidth": 1.2}
                )
                axes.plot(thresholds, recall_curve(selected, thresholds), label=label, **style)
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="IoU threshold", ylabel="Recall", title=title or "Recall vs. IoU")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
        return path


# ----------------------------------------------------------------------------------------------------------------
# Referring expression segmentation
# ----------------------------------------------------------------------------------------------------------------
def res_metrics(
    intersections: Sequence[float] | np.ndarray | torch.Tensor, unions: Sequence[float] | np.ndarray | torch.Tensor
) -> dict[str, float | int]:
    """
    Referring segmentation metrics over sentences (paper table 4), in percent.

    Args:
        intersections (shape `(N,)`): |pred ∩ gt| pixel count per sentence.
        unions (shape `(N,)`): |pred ∪ gt| pixel count per sentence (0 means both masks empty: IoU 1).

    Returns:
        `dict`: `mean_iou` (mean of per-sentence IoU), `precision@0.3`, `precision@0.4`, `precision@0.5` (share of
        sentences with IoU ≥ the threshold), `overall_iou` (Σ intersections / Σ unions), all in percent, and
        `num_sentences`.
    """
    intersections = _to_numpy(intersections, np.float64)
    unions = _to_numpy(unions, np.float64)
    if intersections.shape != unions.shape:
        raise ValueError(f"intersections and unions differ in length: {intersections.size} vs {unions.size}")
    if intersections.size == 0:
        raise ValueError("RES metrics are undefined without sentences: got empty inputs")
    if np.any(intersections < 0) or np.any(intersections > unions):
        raise ValueError("need 0 <= intersection <= union for every sentence")
    ious = _iou_from_counts(intersections, unions)
    metrics: dict[str, float | int] = {"mean_iou": 100.0 * float(ious.mean())}
    for threshold in RES_PRECISION_THRESHOLDS:
        metrics[f"precision@{threshold}"] = 100.0 * float((ious >= threshold).mean())
    metrics["overall_iou"] = 100.0 * float(_iou_from_counts(intersections.sum(), unions.sum()))
    metrics["num_sentences"] = int(intersections.size)
    return metrics


class SentenceIouAccumulator(_KeyedResults):
    """
    Streaming collector for referring segmentation: per-sentence intersection and union pixel counts, keyed by
    `sent_id` (deduplicated like [`PhraseIouAccumulator`]); [`~SentenceIouAccumulator.metrics`] gives [`res_metrics`].
    """

    def add(
        self,
        intersections: Sequence[int] | torch.Tensor,
        unions: Sequence[int] | torch.Tensor,
        sent_ids: Sequence[int] | torch.Tensor,
    ) -> None:
        """Record one batch; each argument has shape `(B,)` (e.g. from [`mask_intersection_union`])."""
        columns = [_to_list(intersections), _to_list(unions), _to_list(sent_ids)]
        if len({len(column) for column in columns}) != 1:
            raise ValueError(f"all arguments need one entry per sentence, got lengths {[len(c) for c in columns]}")
        self._add(
            [(int(s),) for s in columns[2]], [(int(i), int(u)) for i, u in zip(columns[0], columns[1], strict=True)]
        )

    def metrics(self) -> dict[str, float | int]:
        """[`res_metrics`] of the recorded sentences."""
        counts = np.array([value for _, value in self._sorted_items()], dtype=np.float64).reshape(-1, 2)
        return res_metrics(counts[:, 0], counts[:, 1])


def format_res_table(rows: Mapping[str, Mapping[str, float]], decimals: int = 1) -> str:
    """
    Format RES results in the layout of the paper's table 4, one row per model.

    Args:
        rows (`Mapping[str, Mapping[str, float]]`): row label (e.g. `"EPNG (zero-shot)"`, `"random init"`) → output
            of [`res_metrics`].
        decimals (`int`, defaults to 1): digits after the decimal point.

    Returns:
        `str`: a Markdown table with columns Model | mIoU | P@0.3 | P@0.4 | P@0.5 | oIoU.
    """
    if not rows:
        raise ValueError("nothing to format: `rows` is empty")
    keys = ["mean_iou", *(f"precision@{t}" for t in RES_PRECISION_THRESHOLDS), "overall_iou"]
    header = ["Model", "mIoU", *(f"P@{t}" for t in RES_PRECISION_THRESHOLDS), "oIoU"]
    body = [[label, *(f"{metrics[key]:.{decimals}f}" for key in keys)] for label, metrics in rows.items()]
    return _results_table(header, body)
