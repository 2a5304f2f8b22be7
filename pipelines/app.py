"""turbo's web app (Gradio): text-to-video and image-to-video with a model picker, an acceleration panel generated from
turbo's option specs, per-step progress, timings, peak GPU memory, the applied-config report, a same-seed comparison
with the unaccelerated run and a gallery of the session's results. Each generate button is also a named HTTP API
endpoint (`/text_to_video`, `/text_to_video_compare`, `/image_to_video`, `/image_to_video_compare`) for
`gradio_client` or plain HTTP.

    python app.py                      # http://127.0.0.1:7860 with the shipped ToyWorld models
    turbo app --model DIR --port 8000  # start on a diffusers pipeline directory

Validation and loading come from `pipelines.options` and `pipelines.registry` (shared with the CLI); the panel logic
from `pipelines.app_panel`, generation from `pipelines.app_engine`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from pipelines import app_panel, options, registry
from pipelines.app_engine import Engine, OutOfMemory

__all__ = ["Server", "build_app", "build_parser", "endpoint_names", "main", "serve"]

log = logging.getLogger("turbo.app")

MAX_IMAGE_BYTES = 8 * 2**20  # upload limit (the server refuses larger files)
TABS = {"t2v": ("Text-to-Video", "text_to_video"), "i2v": ("Image-to-Video", "image_to_video")}


def endpoint_names(kind: str) -> tuple[str, str]:
    """(generate, compare) API endpoint names of a tab ("t2v" or "i2v")."""
    name = TABS[kind][1]
    return name, f"{name}_compare"


# ------------------------------------------------------------------------------------------------------ generation


def _models_of(kind: str, extra: registry.ModelPreset | None) -> tuple[list[registry.ModelPreset], list]:
    """(available presets of `kind`, unavailable ones); `extra` (the --model directory) first when it fits."""
    presets = registry.list_models()
    if extra is not None and all(p.name != extra.name for p in presets):
        presets = [extra, *presets]
    elif extra is not None:
        presets = [extra, *[p for p in presets if p.name != extra.name]]
    mine = [p for p in presets if p.kind == kind]
    return [p for p in mine if registry.is_available(p)], [p for p in mine if not registry.is_available(p)]


def _number(value, name: str, kind=int):
    """A form number (gradio gives floats or None) as `kind`; None stays None (the model's default)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise options.RequestError(f"{name} must be a number, got {value!r}.") from None
    if kind is int:
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise options.RequestError(f"{name} must be a whole number, got {value}.")
        return int(value)
    return float(value)


def _markdown(result, baseline) -> str:
    runs = [r for r in (baseline, result) if r is not None]
    settings = result.settings
    lines = [f"**{result.label}** — {result.seconds:.2f} s for {settings['frames']} frames "
             f"{settings['width']}×{settings['height']}, {settings['steps']} steps (seed {settings['seed']}, "
             f"{settings['model']})", "",
             "| seconds | " + " | ".join("turbo" if r.report else "unaccelerated" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for bucket in result.timings:
        lines.append(f"| {bucket} | " + " | ".join(f"{r.timings.get(bucket, 0.0):.2f}" for r in runs) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r.seconds:.2f}**" for r in runs) + " |")
    memory = ["— (CPU)" if r.peak_memory is None else f"{r.peak_memory / 2**30:.2f} GiB" for r in runs]
    lines.append("| peak GPU memory | " + " | ".join(memory) + " |")
    if baseline is not None:
        from pipelines.app_engine import psnr

        value = psnr(result.frames, baseline.frames)
        text = "∞ (identical)" if value == math.inf else f"{value:.1f} dB"
        lines += ["", f"**Speed-up {baseline.seconds / result.seconds:.2f}×** against the unaccelerated run with the "
                      f"same seed; same-seed PSNR {text}."]
    return "\n".join(lines)


class _Generator:
    """The function behind one button: form values in, (video, baseline video, summary markdown, details) out."""

    def __init__(self, engine: Engine, kind: str, compare: bool, all_specs: list):
        self.engine, self.kind, self.compare, self.specs = engine, kind, compare, all_specs

    @staticmethod
    def filled_from(form: dict) -> str:
        """The preset whose values the panel shows (a session state; API calls get the start preset)."""
        return form.pop("_filled_from", None) or app_panel.DEFAULT

    def __call__(self, progress=None, **form) -> tuple[Any, Any, str, dict]:
        import gradio as gr

        import turbo
        from turbo.toyworld.train import ToyWorldWeightsError

        try:
            return self._generate(progress, form)
        except (options.RequestError, registry.RegistryError, turbo.TurboError, OutOfMemory,
                ToyWorldWeightsError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as error:  # the server keeps serving; the user sees what failed
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(error).__name__}: {error}", print_exception=False) from None

    def _generate(self, progress, form: dict) -> tuple[Any, Any, str, dict]:
        model = form.get("model") or ""
        available, missing = _models_of(self.kind, None)
        preset = next((p for p in available if p.name == model), None)
        if preset is None:
            preset = self.engine.extra_models.get(model)
        if preset is None:
            other = next((p for p in missing if p.name == model), None)
            if other is not None:
                raise registry.RegistryError(f"{other.name} is not on this machine: {registry.how_to_get(other)}")
            names = ", ".join(p.name for p in available)
            raise registry.RegistryError(f"unknown {TABS[self.kind][0]} model {model!r}; choose one of {names}.")
        image = form.get("image") if self.kind == "i2v" else None
        if self.kind == "i2v" and not image:
            raise options.RequestError("upload a first frame (PNG or JPEG) for image-to-video.")
        if image and os.path.getsize(image) > MAX_IMAGE_BYTES:
            raise options.RequestError(f"the image is larger than {MAX_IMAGE_BYTES // 2**20} MB.")
        prompt = (form.get("prompt") or "").strip()
        if not prompt:
            raise options.RequestError("type a prompt.")
        request = options.validate_request(
            model=preset, prompt=prompt, negative_prompt=(form.get("negative_prompt") or None), image=image,
            height=_number(form.get("height"), "height"), width=_number(form.get("width"), "width"),
            frames=_number(form.get("frames"), "frames"), steps=_number(form.get("steps"), "steps"),
            guidance=_number(form.get("guidance"), "guidance", float), seed=_number(form.get("seed"), "seed") or 0,
            device=self.engine.device, dtype=None if self.engine.dtype is None else str(self.engine.dtype)[6:])
        values = {spec.key: form.get(spec.key) for spec in self.specs}
        config, preset_name = app_panel.panel_config(form.get("preset") or app_panel.DEFAULT, values,
                                                     allow_untuned=bool(form.get("allow_untuned")),
                                                     all_specs=self.specs, base=self.filled_from(form))
        steps, guidance = _number(form.get("steps"), "steps"), _number(form.get("guidance"), "guidance", float)
        request = options.fit_request(request, config,  # e.g. the rCM sampler's own steps, guidance 1
                                      steps_given=steps is not None and steps != preset.steps,
                                      guidance_given=guidance is not None and guidance != preset.guidance)
        label = "unaccelerated"
        if config is not None:
            from turbo.eval.harness import describe_config

            label = describe_config(config)
            label = f"{preset_name}: {label}" if preset_name else label

        def on_step(step: int, total: int, what: str) -> None:
            if progress is not None:
                progress((step, total), desc=f"{what}: step {step}/{total}", unit="steps")

        result, baseline = self.engine.generate(request, config, label=label, compare=self.compare,
                                                progress=on_step, allow_untuned=bool(form.get("allow_untuned")))
        details = {"result": result.summary(), "baseline": None if baseline is None else baseline.summary()}
        if baseline is not None:
            from pipelines.app_engine import psnr

            value = psnr(result.frames, baseline.frames)
            details["speedup"] = round(baseline.seconds / result.seconds, 3)
            details["psnr_db"] = "inf" if value == math.inf else round(value, 2)
        return (result.video_path, None if baseline is None else baseline.video_path, _markdown(result, baseline),
                details)


# ------------------------------------------------------------------------------------------------------------ the UI


def _control(spec, value, visible: bool):
    """One gradio control for an acceleration option spec (its help text as the hover title)."""
    import gradio as gr

    label = spec.key.replace("_", " ")
    info = spec.help + (f" [{', '.join(spec.methods)}]" if spec.methods else "")
    common = {"label": label, "visible": visible, "min_width": 200, "scale": 1, "elem_classes": ["turbo-option"],
              "elem_id": f"option-{spec.key}"}
    if spec.type is bool:
        return gr.Checkbox(value=bool(value), info=info, **common)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=value, info=info, **common)
    if spec.type in (int, float):  # the range is checked by turbo's config (one message naming the option)
        info += f" (range {spec.range[0]}..{spec.range[1]})" if spec.range else ""
        return gr.Number(value=value, info=info, precision=0 if spec.type is int else None, **common)
    return gr.Textbox(value=value, info=info, **common)


def _tab(engine: Engine, kind: str, extra: registry.ModelPreset | None, all_specs: list) -> None:
    """The controls and events of one tab (called inside a gr.Tab)."""
    import gradio as gr

    available, missing = _models_of(kind, extra)
    first = available[0] if available else None
    method = app_panel.method_spec(all_specs)
    start_preset = app_panel.DEFAULT
    start_values = app_panel.panel_values(start_preset, all_specs)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(choices=[(p.title, p.name) for p in available], value=first.name if first else None,
                                label="Model", info="models whose weights are on this machine")
            about = gr.Markdown(_about(first))
            if missing:
                with gr.Accordion(f"Other models ({len(missing)} not on this machine)", open=False):
                    gr.Markdown("\n".join(f"- **{p.title}** (`{p.name}`): {registry.how_to_get(p)}"
                                          for p in missing))
            prompt = gr.Textbox(label="Prompt", value=options.DEFAULT_PROMPT, lines=2, elem_id=f"{kind}-prompt")
            negative = gr.Textbox(label="Negative prompt", value="", lines=1)
            image = None
            if kind == "i2v":
                image = gr.Image(label="First frame (PNG/JPEG)", type="filepath", sources=["upload", "clipboard"],
                                 elem_id="i2v-image", height=256)
                _refuse_non_images(image)
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id=f"{kind}-seed")
                steps = gr.Number(label="Steps", value=first.steps if first else 50, precision=0,
                                  elem_id=f"{kind}-steps")
                guidance = gr.Number(label="Guidance", value=first.guidance if first else None)
            with gr.Row():
                height = gr.Number(label="Height", value=first.height if first else 480, precision=0,
                                   info="multiple of 16", elem_id=f"{kind}-height")
                width = gr.Number(label="Width", value=first.width if first else 832, precision=0,
                                  info="multiple of 16", elem_id=f"{kind}-width")
                frames = gr.Number(label="Frames", value=first.frames if first else 81, precision=0, info="4k+1",
                                   elem_id=f"{kind}-frames")
            with gr.Accordion("Acceleration", open=True):
                preset = gr.Dropdown(choices=app_panel.preset_choices(), value=start_preset, label="Preset",
                                     info="off = unaccelerated; default = turbo's safe default on this machine; "
                                          "the others fill in the options below")
                filled_from = gr.State(start_preset)
                allow_untuned = gr.Checkbox(value=False, label="allow untuned",
                                            info="run presets that need turbo-fine-tuned weights on stock weights")
                controls = {}
                with gr.Row(equal_height=False):
                    for spec in all_specs:
                        visible = app_panel.applies(spec, start_values.get(method.key))
                        controls[spec.key] = _control(spec, start_values.get(spec.key), visible)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{kind}-generate")
                compare = gr.Button("Compare with baseline", elem_id=f"{kind}-compare")
        with gr.Column(scale=1):
            with gr.Row():
                video = gr.Video(label="turbo", format="mp4", elem_id=f"{kind}-video", autoplay=True, loop=True,
                                 height=320)
                baseline = gr.Video(label="unaccelerated baseline (same seed)", format="mp4",
                                    elem_id=f"{kind}-baseline", autoplay=True, loop=True, height=320)
            summary = gr.Markdown(elem_id=f"{kind}-summary")
            with gr.Accordion("Applied config and timings", open=False):
                details = gr.JSON(label="details")
            gallery = gr.Gallery(label="This session", columns=4, rows=1, height=200, object_fit="contain",
                                 elem_id=f"{kind}-gallery")
            history = gr.State([])

    control_list = list(controls.values())

    def on_model(name):
        choice = next((p for p in available if p.name == name), None) or engine.extra_models.get(name)
        if choice is None:
            return [gr.update()] * 7
        return [_about(choice), choice.height, choice.width, choice.frames, choice.steps, choice.guidance,
                choice.recommended or app_panel.DEFAULT]

    model.change(on_model, model, [about, height, width, frames, steps, guidance, preset], api_visibility="private")

    def on_preset(name):
        values = app_panel.panel_values(name, all_specs)
        shown = values.get(method.key)
        return [name] + [gr.update(value=values.get(s.key), visible=app_panel.applies(s, shown)) for s in all_specs]

    preset.change(on_preset, preset, [filled_from, *control_list], api_visibility="private")

    def on_method(name):
        return [gr.update(visible=app_panel.applies(s, name)) for s in all_specs]

    controls[method.key].change(on_method, controls[method.key], control_list, api_visibility="private")

    form = {"model": model, "prompt": prompt, "negative_prompt": negative, "seed": seed, "height": height,
            "width": width, "frames": frames, "steps": steps, "guidance": guidance, "preset": preset,
            "allow_untuned": allow_untuned}
    if image is not None:
        form["image"] = image
    form.update(controls)
    form["_filled_from"] = filled_from

    def remember(video_path, text, items):
        if not video_path:
            return items, items
        caption = text.splitlines()[0].replace("**", "") if text else ""
        items = [*items, (video_path, caption)]
        return items, items

    for button, name, with_baseline in ((generate, endpoint_names(kind)[0], False),
                                        (compare, endpoint_names(kind)[1], True)):
        fn = _Generator(engine, kind, with_baseline, all_specs)
        event = button.click(_with_progress(fn, list(form)), inputs_kwargs=form,
                             outputs=[video, baseline, summary, details], api_name=name, concurrency_id="gpu",
                             concurrency_limit=1)
        event.success(remember, [video, summary, history], [gallery, history], api_visibility="private")


def _with_progress(generator: _Generator, names: list[str]):
    """A function gradio can call with the form as keywords: a `gr.Progress` default (gradio injects the tracker by
    the parameter's default) and one keyword-only parameter per form field, default None, so every API parameter is
    optional and named."""
    import inspect

    import gradio as gr

    def run(progress=gr.Progress(), **form):  # noqa: B008 (gradio reads the default to inject the tracker)
        return generator(progress=progress, **form)

    parameters = [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    run.__signature__ = inspect.Signature(parameters)

    run.__doc__ = (f"{'Compare: the unaccelerated run, then ' if generator.compare else ''}"
                   f"{TABS[generator.kind][0]} with turbo; returns (mp4, baseline mp4 or None, summary, details).")
    run.__name__ = endpoint_names(generator.kind)[1 if generator.compare else 0]
    return run


def _refuse_non_images(image) -> None:
    """Make the image input answer an undecodable upload with one sentence (gradio decodes uploads before the
    function runs, and its own error names component indices)."""
    import gradio as gr

    decode = image.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except gr.Error:
            raise
        except Exception as error:  # PIL raises several types for files that are not images
            raise gr.Error(f"the uploaded first frame is not a readable image ({type(error).__name__}); upload a "
                           "PNG or JPEG file.", print_exception=False) from None

    image.preprocess = preprocess


def _about(preset: registry.ModelPreset | None) -> str:
    if preset is None:
        return "No model of this kind is on this machine (see *Other models*)."
    recommended = preset.recommended or "default"
    return (f"{preset.frames} frames {preset.width}×{preset.height}, {preset.steps} steps natively; "
            f"recommended preset **{recommended}**. {preset.needs}.")


def build_app(engine: Engine | None = None, model: str | None = None):
    """The gr.Blocks of the app (not launched). `engine` runs the generations (default: a new `Engine`); `model` is
    a registry name or a diffusers pipeline directory offered first in its tab."""
    import gradio as gr

    engine = engine or Engine()
    extra = registry.resolve_model(model) if model else None
    engine.extra_models = {extra.name: extra} if extra is not None else {}
    all_specs = app_panel.specs()
    with gr.Blocks(title="turbo — faster video diffusion") as demo:
        gr.Markdown("## turbo — faster video diffusion\nPick a model, type a prompt, choose how much speed to trade, "
                    "and compare with the unaccelerated run. On a CPU every method runs its PyTorch reference, "
                    "which is exact but not faster than dense attention.")
        for kind, (title, _) in TABS.items():
            with gr.Tab(title, elem_id=f"tab-{kind}"):
                _tab(engine, kind, extra if extra is not None and extra.kind == kind else None, all_specs)
    return demo


# ------------------------------------------------------------------------------------------------------- serving


@dataclass
class Server:
    """A running app: its gr.Blocks, engine, local URL and temporary folder (outputs and gradio's cache)."""

    app: Any
    engine: Engine
    url: str
    temp_dir: str
    _saved_env: str | None

    def close(self) -> None:
        """Stop the server and delete every temporary file it made."""
        try:
            self.app.close()
        finally:
            self.engine.close()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if self._saved_env is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._saved_env


def serve(host: str = "127.0.0.1", port: int | None = None, share: bool = False, model: str | None = None,
          queue_size: int = 8, device: str | None = None, quiet: bool = True) -> Server:
    """Build and launch the app without blocking: a queue of `queue_size` waiting requests, one generation at a time
    (per GPU), uploads up to 8 MB, outputs and uploads in one temporary folder that `Server.close()` removes."""
    temp_dir = tempfile.mkdtemp(prefix="turbo-app-")
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(temp_dir, "gradio")
    try:
        if device is not None:
            device = options.check_device(device)
        engine = Engine(device=device, output_dir=os.path.join(temp_dir, "outputs"))
        demo = build_app(engine, model)
        demo.queue(max_size=queue_size, default_concurrency_limit=1)
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
                    max_file_size=MAX_IMAGE_BYTES, show_error=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved
        raise
    return Server(demo, engine, demo.local_url, temp_dir, saved)


def build_parser() -> argparse.ArgumentParser:
    """Flags of `python app.py` / `turbo app`."""
    parser = argparse.ArgumentParser(prog="turbo app", description="turbo's web UI and HTTP API (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (opt-in)")
    parser.add_argument("--model", default=None, help="a model name or a diffusers pipeline directory to offer first")
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait (default 8); more get "
                                                                   "'queue full'")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Start the app and serve until Ctrl-C; temporary files are removed on exit."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.queue_size < 1:
        print("turbo app: --queue-size must be at least 1.", file=sys.stderr)
        return 2
    try:
        server = serve(args.host, args.port, args.share, args.model, args.queue_size, args.device, quiet=False)
    except (registry.RegistryError, options.RequestError) as error:
        print(f"turbo app: {error}", file=sys.stderr)
        return 2
    print(f"turbo app on {server.url} (Ctrl-C stops it)")

    def stop(_signum, _frame):  # SIGTERM stops like Ctrl-C, so the temporary files are removed
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
