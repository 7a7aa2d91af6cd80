"""`evaluate` module: Average Recall of Panoptic Narrative Grounding (overall, thing, stuff, singular, plural).

Load it offline from its folder: `evaluate.load(training.metrics.PNG_AVERAGE_RECALL_PATH)`.

`evaluate` copies this script into its modules cache before importing it, so a relative import of the package
cannot work. The math lives in `training.metrics` (installed with the `epng` package) and is imported absolutely.
The import sits inside `try` on purpose: evaluate's dependency scan only reads top-level import lines and would
otherwise answer a missing package with "pip install training", a different project; our message names the
right package instead.
"""

import datasets
import evaluate

try:
    from processing.citations import EPNG_CITATION, PNG_CITATION
    from training.metrics import average_recall_table
except ImportError as error:
    raise ImportError(
        "png_average_recall reuses `training.metrics` and `processing.citations` of the EPNG package: install it "
        "first (`pip install -e <path to the EPNG repository>`)."
    ) from error


_DESCRIPTION = """
Average Recall (AR) of the Panoptic Narrative Grounding benchmark. For every grounded phrase, the IoU of its
predicted and ground-truth masks (at the original image resolution) is given. With thresholds
t = numpy.arange(0, 1, 1e-5) and recall(t) the fraction of phrases with IoU >= t,
AR = sum_i (t[i+1] - t[i]) * recall(t[i]). AR is reported for all phrases and for the thing / stuff /
singular / plural subsets, in percent.
"""

_KWARGS_DESCRIPTION = """
Args:
    ious (`list[float]`): IoU of each grounded phrase, in [0, 1].
    is_thing (`list[bool]`): True when the phrase refers to "thing" categories, False for "stuff".
    is_plural (`list[bool]`): True when the phrase is plural.
Returns:
    all, thing, stuff, singular, plural (`float`): AR in percent (nan for a subset without phrases).
    num_all, num_thing, num_stuff, num_singular, num_plural (`int`): phrase counts.
Examples:
    >>> metric = evaluate.load("training/png_average_recall")
    >>> metric.compute(ious=[0.2, 0.9], is_thing=[True, False], is_plural=[False, False])["all"]
    55.0...
"""

_CITATION = f"{PNG_CITATION}\n{EPNG_CITATION}"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PngAverageRecall(evaluate.Metric):
    """Average Recall of Panoptic Narrative Grounding; the computation is `training.metrics.average_recall_table`."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "ious": datasets.Value("float64"),
                    "is_thing": datasets.Value("bool"),
                    "is_plural": datasets.Value("bool"),
                }
            ),
        )

    def _compute(self, ious, is_thing, is_plural):
        return average_recall_table(ious, is_thing, is_plural)
