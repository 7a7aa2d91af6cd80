"""Web app: ground a narrative on an uploaded image with an EPNG model, in the browser (Gradio).

    python -m training.app --model_name_or_path outputs/demo/model [--examples_dir outputs/demo/png_synthetic]
                           [--server_name ADDRESS] [--server_port 7860] [--max_image_pixels 16000000]

The narrative's noun phrases are found automatically (spaCy, the `phrases` extra) or typed in a phrase box. The
page shows the narrative with each phrase highlighted in the colour of its mask, the overlay, a table of the phrases
with their scores, and one switch per phrase that redraws the overlay with only the switched-on masks. Bad input (no
image, no narrative, no noun phrase, a phrase not in the narrative, a huge image) gets a message in the page.
Needs the `app` extra (which includes `phrases`): `pip install -e ".[app]"`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import gradio as gr

from processing.examples import load_examples
from training.app_backend import (
    DEFAULT_MAX_IMAGE_PIXELS,
    TABLE_HEADERS,
    AppInputError,
    Grounder,
    check_narrative,
    highlighted_narrative,
    open_image,
    parse_phrases,
    phrase_colors,
    phrase_label,
    phrase_table,
    render_overlay,
)

logger = logging.getLogger(__name__)

TITLE = "EPNG: Panoptic Narrative Grounding"
DESCRIPTION = (
    "Upload an image and describe it in a few sentences. Every noun phrase of the description that names something "
    "in the image gets a mask, drawn in the phrase's colour. The phrases are found automatically; to choose them "
    "yourself, list them in the phrase box (one per line or separated by `;`, in the order they appear)."
)


class GroundingHandlers:
    """The page's callbacks over one loaded model; their results match the outputs wired in [`build_demo`]."""

    def __init__(self, grounder: Grounder, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.grounder = grounder
        self.max_image_pixels = max_image_pixels

    def ground(self, image_path, narrative, phrases_text, threshold):
        """Ground the typed phrases, or the automatic ones when none are typed. Returns (highlighted narrative, overlay, table, switches, session state)."""
        try:
            image = open_image(image_path, self.max_image_pixels)
            narrative = check_narrative(narrative)
            phrases = self.grounder(image, narrative, parse_phrases(phrases_text), threshold)
        except AppInputError as error:
            raise gr.Error(str(error), title="Cannot ground this input", print_exception=False) from error
        except Exception as error:
            # The page gets one line; the traceback goes to the server log only.
            logger.exception("grounding failed")
            raise gr.Error(f"Grounding failed: {type(error).__name__}: {error}", print_exception=False) from error
        labels = [phrase_label(index) for index in range(len(phrases))]
        highlighted = gr.HighlightedText(
            value=highlighted_narrative(narrative, phrases),
            color_map=dict(zip(labels, phrase_colors(len(phrases)), strict=True)),
        )
        switches = gr.CheckboxGroup(
            choices=[(f"{labels[index]}. {phrase.phrase}", index) for index, phrase in enumerate(phrases)],
            value=list(range(len(phrases))),
        )
        state = {"image": image, "narrative": narrative, "phrases": phrases}
        return highlighted, render_overlay(image, narrative, phrases), phrase_table(phrases), switches, state

    @staticmethod
    def redraw(shown, state):
        """The overlay with only the switched-on phrases."""
        if not state:
            return None
        return render_overlay(state["image"], state["narrative"], state["phrases"], shown)


def build_demo(
    grounder: Grounder,
    examples_dir: str | Path | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> gr.Blocks:
    """The Gradio page over `grounder`; examples come from `examples_dir` (see [`load_examples`])."""
    handlers = GroundingHandlers(grounder, max_image_pixels)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{DESCRIPTION}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", elem_id="image-input")
                narrative = gr.Textbox(label="Narrative", lines=4, elem_id="narrative-input")
                phrases = gr.Textbox(
                    label="Noun phrases to ground (optional)",
                    lines=2,
                    placeholder="empty: found automatically; else one per line, or separated by ';'",
                    elem_id="phrases-input",
                )
                threshold = gr.Slider(0.05, 0.95, value=grounder.default_threshold, step=0.05, label="Mask threshold")
                submit = gr.Button("Ground", variant="primary", elem_id="ground-button")
            with gr.Column():
                highlighted = gr.HighlightedText(label="Phrases in the narrative", elem_id="highlighted-narrative")
                overlay = gr.Image(label="Masks", type="pil", interactive=False, elem_id="overlay")
                switches = gr.CheckboxGroup(label="Show masks", choices=[], elem_id="phrase-switches")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Phrases", interactive=False, elem_id="phrase-table")
        state = gr.State()
        submit.click(
            handlers.ground,
            inputs=[image, narrative, phrases, threshold],
            outputs=[highlighted, overlay, table, switches, state],
        )
        switches.change(handlers.redraw, inputs=[switches, state], outputs=overlay)
        examples = load_examples(examples_dir) if examples_dir else []
        if examples:
            gr.Examples(
                [[example.image, example.narrative] for example in examples],
                inputs=[image, narrative],
                label="Examples (synthetic validation images)",
            )
    return demo


def launch(demo: gr.Blocks, server_name: str | None, server_port: int | None, examples_dir: str | Path | None) -> None:
    demo.queue(default_concurrency_limit=1).launch(
        server_name=server_name,
        server_port=server_port,
        show_error=True,
        max_file_size="50mb",
        allowed_paths=[str(examples_dir)] if examples_dir else None,
        ssr_mode=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_name_or_path", required=True, help="EPNG folder saved with save_pretrained, or a Hub model id"
    )
    parser.add_argument("--examples_dir", help="examples.json folder or PNG-format benchmark root (val2017)")
    parser.add_argument(
        "--server_name",
        default=None,
        help="address to listen on (default: $GRADIO_SERVER_NAME, which a Space sets, else 127.0.0.1: loopback only)",
    )
    parser.add_argument("--server_port", type=int, default=None, help="port (default: first free one from 7860)")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    parser.add_argument("--device", default=None, help="torch device of the model (default: cpu)")
    parser.add_argument("--no_optimize", action="store_true", help="run the model without optimize_for_inference()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    grounder = Grounder.from_pretrained(args.model_name_or_path, device=args.device, optimize=not args.no_optimize)
    demo = build_demo(grounder, args.examples_dir, args.max_image_pixels)
    launch(demo, args.server_name, args.server_port, args.examples_dir)


if __name__ == "__main__":
    main()
