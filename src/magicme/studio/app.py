"""`magicme studio`: the VCD workflow in a web page (Gradio), on the workspace and jobs modules.

The page only gathers settings and shows results; every action is a function of
`magicme.studio.jobs` or `Workspace`. Long jobs (masks, training, renders) share one queue
slot per device, so a second user waits with their place shown. Errors in those functions
become a message in the page, never a dead server.
"""

import functools
import html
import inspect
import logging
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from magicme import registry
from magicme.cli import describe, report_crash
from magicme.settings import MASK_BACKENDS, SCHEDULERS, GenerationSettings, UpscaleSettings
from magicme.studio import jobs
from magicme.studio.workspace import EXPORTS, MAX_UPLOAD_BYTES, Workspace, checked_name

DEVICE_QUEUE = "device"  # one long job at a time on the device
STAGE_BARS = gr.Progress(track_tqdm=True)  # the library's tqdm bars, shown in the page
FORM = ("prompt", "negative_prompt", "num_frames", "height", "width", "num_inference_steps", "guidance_scale")
FORM += ("gamma", "seed", "scheduler", "freeu", "free_init", "free_noise")
HELP = """\
**Identities**: drop 3 to 20 photos of one subject, name it, check the masks, train. **Generate**:
insert identities into the prompt, render, add Face VCD and Tiled VCD. Prompt travel:
`0: <alice> woman walking | 8: <alice> woman running`. Everything is saved in the workspace."""


def page_errors(handler: Callable) -> Callable:
    """Bad input and system faults as a message in the page; a bug as one line and a traceback file."""

    def message(error: Exception) -> gr.Error:  # escaped: the page shows messages as HTML, and <name> is no tag
        if isinstance(error, ValueError | OSError):
            return gr.Error(html.escape(describe(error)), print_exception=False)
        text = f"internal error: {type(error).__name__}: {error}; traceback in {report_crash()}"
        return gr.Error(html.escape(text))

    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from handler(*args, **kwargs)
            except Exception as error:
                raise message(error) from None

        return generator

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as error:
            raise message(error) from None

    return wrapped


class Studio:
    """The page's handlers, bound to one workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.cancels: dict[str, threading.Event] = {}

    @property
    def model(self) -> jobs.StudioModel:
        return jobs.studio_model(self.workspace)

    # Identities --------------------------------------------------------------------------------
    def refresh(self) -> tuple[Any, ...]:
        """Everything listed from the workspace: identities, history and the model line."""
        entries = self.workspace.identities()
        rows = [
            [entry.name, entry.class_word, "yes" if entry.photos else "uploaded", entry.file.name] for entry in entries
        ]
        names = [entry.name for entry in entries]
        history = [render_label(folder, request) for folder, request in self.workspace.renders()]
        return (
            rows,
            gr.update(choices=names, value=names[0] if names else None),
            gr.update(choices=names, value=names[0] if names else None),
            gr.update(choices=history, value=history[0] if history else None),
            f"**Model:** {self.model.describe()}",
        )

    def settings_for(self, photos: list[str] | None, name: str, class_word: str, masks: str, steps: float):
        settings = jobs.training_settings(self.workspace, self.model, name, class_word, masks, int(steps))
        notes = []
        if photos:
            _, rejected = self.workspace.add_photos(name, [Path(p) for p in photos], settings.resolution)
            notes = [f"skipped {problem}" for problem in rejected]
        elif not Path(settings.photos).is_dir():
            raise ValueError("drop 3 to 20 photos of the subject first")
        return settings, notes

    def check_masks(self, photos, name, class_word, masks, steps) -> tuple[str, str]:
        settings, notes = self.settings_for(photos, name, class_word, masks, steps)
        sheet = jobs.check_masks(settings)
        return str(sheet), "\n".join(["Masks ready: check each row (photo | mask | masked) before training.", *notes])

    def train(self, photos, name, class_word, masks, steps) -> Iterator[tuple[Any, ...]]:
        settings, notes = self.settings_for(photos, name, class_word, masks, steps)
        cancel = self.cancels.setdefault(settings.name, threading.Event())
        cancel.clear()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["identity"] = jobs.train(settings, cancel)
            except KeyboardInterrupt:
                outcome["cancelled"] = True
            except Exception as error:  # reported by the handler, in the page
                outcome["error"] = error

        worker = threading.Thread(target=work, name=f"train-{settings.name}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(1.0)
            sheet, stills, losses, status = self.training_view(settings.name, settings.steps, notes)
            yield sheet, stills, losses, status, *(gr.update(),) * 5
        if "error" in outcome:
            raise outcome["error"]
        sheet, stills, losses, _ = self.training_view(settings.name, settings.steps, notes)
        if outcome.get("cancelled"):
            step = self.step(settings.name)
            done = f"Cancelled at step {step}: its checkpoint is kept, and Train with the same settings continues."
        else:
            done = f"Identity `<{settings.name}>` ready: insert it into a prompt on the Generate tab."
        yield sheet, stills, losses, done, *self.refresh()

    def step(self, name: str) -> int:
        losses = self.workspace.losses(name)
        return losses[-1][0] if losses else 0

    def training_view(self, name: str, steps: int, notes: list[str]) -> tuple[Any, ...]:
        losses = self.workspace.losses(name)
        folder = self.workspace.identity_folder(name)
        stills = [str(p) for p in sorted((folder / "previews").glob("*.png"))]
        sheet = str(folder / "masks.png") if (folder / "masks.png").is_file() else None
        step, loss = losses[-1] if losses else (0, float("nan"))
        status = "\n".join([f"Training `<{name}>`: step {step} of {steps}, loss {loss:.4f}", *notes])
        plot = pd.DataFrame({"step": [s for s, _ in losses], "loss": [v for _, v in losses]})
        return sheet, stills, plot, status

    def cancel(self, name: str) -> str:
        event = self.cancels.get(checked_name(name))
        if not event:
            return "Nothing is training under that name."
        event.set()
        return "Cancelling after the current step ..."

    def import_identity(self, upload: str | None, name: str, class_word: str) -> tuple[Any, ...]:
        if not upload:
            raise ValueError("choose an identity file (.safetensors, A1111 .pt or diffusers .bin) to upload")
        entry = self.workspace.import_identity(Path(upload), name or None, class_word or None)
        return f"Uploaded `<{entry.name}>` ({entry.class_word}).", *self.refresh()

    def export(self, name: str, layout: str) -> str:
        if not name:
            raise ValueError("choose an identity to download")
        return str(self.workspace.export(name, EXPORTS[layout]))

    def delete(self, name: str) -> tuple[Any, ...]:
        if not name:
            raise ValueError("choose an identity to delete")
        self.workspace.delete_identity(name)
        return f"Deleted `<{name}>`.", *self.refresh()

    # Generate ----------------------------------------------------------------------------------
    def insert(self, prompt: str, name: str) -> str:
        if not name:
            raise ValueError("no identity yet: train or upload one on the Identities tab")
        phrase = f"<{name}> {self.workspace.entry(name).class_word}"
        return f"{prompt.rstrip()} {phrase}".strip() if prompt.strip() else f"a photo of {phrase}"

    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        num_frames: float,
        height: float,
        width: float,
        num_inference_steps: float,
        guidance_scale: float,
        gamma: float,
        seed: float,
        scheduler: str,
        freeu: bool,
        free_init: bool,
        free_noise: bool,
        face_vcd: bool,
        upscale: bool,
        tile_strength: float,
        progress: gr.Progress = STAGE_BARS,
    ) -> tuple[Any, ...]:
        """Render with the form's settings (the stage bars show as the page's progress)."""
        given = locals()
        generation = {name: given[name] for name in FORM}
        for name in ("num_frames", "height", "width", "num_inference_steps", "seed"):
            generation[name] = int(generation[name])
        if generation["seed"] < 0:
            generation["seed"] = random.randrange(2**31)
        folder = jobs.render(self.workspace, self.model, generation, face_vcd, tile_strength if upscale else None)
        return self.show_render(folder)

    def show_render(self, folder: Path) -> tuple[Any, ...]:
        folder = self.workspace.inside(folder)
        videos = jobs.stage_videos(folder)
        final = videos[-1]
        metrics = jobs.read_metrics(folder)
        request = jobs.read_request(folder)
        downloads = [str(final), str(final.with_suffix(".json"))]
        seed = f"**Seed:** {request['seed']} · {folder.name}"
        sheet = folder / "contact-sheet.png"
        return (
            str(final),
            jobs.side_by_side(folder),
            str(sheet) if sheet.is_file() else None,
            jobs.metrics_table(metrics),
            downloads,
            seed,
            *self.refresh()[3:4],
        )

    # History -----------------------------------------------------------------------------------
    def reopen(self, label: str) -> tuple[Any, ...]:
        folder = self.render_folder(label)
        request = jobs.read_request(folder)
        generation = request["stages"]["generation"]
        form = [generation[name] for name in FORM]
        stages = request["stages"]
        strength = stages["upscale"]["strength"] if "upscale" in stages else gr.update()
        return (*self.show_render(folder), *form, "refine_face" in stages, "upscale" in stages, strength)

    def render_folder(self, label: str) -> Path:
        if not label:
            raise ValueError("no render chosen: generate one first")
        return self.workspace.inside(self.workspace.root / "renders" / label.split(" · ")[0])

    # Models ------------------------------------------------------------------------------------
    def choose_model(self, key: str, base: str, motion: str, lora: str, scale: float, device: str, dtype: str):
        model = {"base_model": base, "motion_adapter": motion, "motion_lora": lora or None}
        model |= {"motion_lora_scale": float(scale), "device": device, "dtype": dtype}
        chosen = jobs.choose_model(self.workspace, key, model)
        return f"**Model:** {chosen.describe()}"


def render_label(folder: Path, request: dict[str, Any]) -> str:
    prompt = request["stages"]["generation"]["prompt"]
    return f"{folder.name} · {prompt[:60]}"


def build_app(workspace: Workspace) -> gr.Blocks:
    """The page: Identities, Generate, History and Models tabs on one workspace."""
    studio = Studio(workspace)
    preset = studio.model.preset
    defaults = GenerationSettings(prompt="", **preset.generation)
    training = preset.training
    with gr.Blocks(title="magicme studio") as app:
        gr.Markdown("# magicme studio\n" + HELP)
        model_line = gr.Markdown(elem_id="model-line")
        with gr.Tabs():
            with gr.Tab("Identities", id="identities"):
                with gr.Row():
                    photos = gr.File(
                        label="Photos (3 to 20; optional NAME.mask.png masks)",
                        file_count="multiple",
                        elem_id="photos",
                    )
                    with gr.Column():
                        name = gr.Textbox(label="Name (prompts use it as <name>)", elem_id="identity-name")
                        class_word = gr.Textbox(label="Class word", value=training.get("class_word", "person"))
                        masks = gr.Dropdown(
                            list(MASK_BACKENDS), value=training.get("masks", "grounded-sam"), label="Masks"
                        )
                        steps = gr.Number(
                            value=training.get("steps", 400),
                            precision=0,
                            label="Training steps",
                            elem_id="training-steps",
                        )
                with gr.Row():
                    check_button = gr.Button("Check masks", elem_id="check-masks")
                    train_button = gr.Button("Train", variant="primary", elem_id="train")
                    cancel_button = gr.Button("Cancel", elem_id="cancel")
                train_status = gr.Markdown(elem_id="train-status")
                with gr.Row():
                    mask_sheet = gr.Image(label="Mask contact sheet", type="filepath", interactive=False)
                    previews = gr.Gallery(label="Preview stills", columns=4)
                    loss_plot = gr.LinePlot(x="step", y="loss", label="Loss")
                gr.Markdown("### Identities in the workspace")
                identity_table = gr.Dataframe(
                    headers=["name", "class word", "photos", "file"], interactive=False, elem_id="identity-table"
                )
                with gr.Row():
                    chosen = gr.Dropdown(
                        allow_custom_value=True, label="Identity", choices=[], elem_id="chosen-identity"
                    )
                    layout = gr.Dropdown(list(EXPORTS), value=next(iter(EXPORTS)), label="Format")
                    export_button = gr.Button("Download")
                    delete_button = gr.Button("Delete", variant="stop")
                export_file = gr.File(label="Identity file", interactive=False)
                with gr.Row():
                    upload = gr.File(
                        label="Upload an identity file (.safetensors, .pt, .bin)", elem_id="identity-upload"
                    )
                    upload_name = gr.Textbox(label="Name for it (default: the file's own)")
                    upload_class = gr.Textbox(label="Class word (default: the file's, or person)")
                    import_button = gr.Button("Upload")
                identity_status = gr.Markdown(elem_id="identity-status")
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    insert_choice = gr.Dropdown(
                        allow_custom_value=True, label="Identity", choices=[], elem_id="insert-identity"
                    )
                    insert_button = gr.Button("Insert into prompt", elem_id="insert")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt)
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    with gr.Row():
                        frames = gr.Number(value=defaults.num_frames, precision=0, label="Frames", elem_id="frames")
                        height = gr.Number(value=defaults.height, precision=0, label="Height")
                        width = gr.Number(value=defaults.width, precision=0, label="Width")
                        inference_steps = gr.Number(
                            value=defaults.num_inference_steps, precision=0, label="Steps", elem_id="inference-steps"
                        )
                    with gr.Row():
                        guidance = gr.Number(value=defaults.guidance_scale, label="Guidance")
                        gamma = gr.Number(value=defaults.gamma, label="Gamma (3D prior)")
                        seed = gr.Number(value=0, precision=0, label="Seed (-1: random)", elem_id="seed")
                        scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler")
                    with gr.Row():
                        freeu = gr.Checkbox(value=defaults.freeu, label="FreeU")
                        free_init = gr.Checkbox(value=defaults.free_init, label="FreeInit")
                        free_noise = gr.Checkbox(value=defaults.free_noise, label="FreeNoise")
                with gr.Row():
                    face_vcd = gr.Checkbox(value=preset.face_vcd, label="+ Face VCD", elem_id="face-vcd")
                    upscale = gr.Checkbox(value=True, label="+ 2x upscale", elem_id="upscale")
                    tile_strength = gr.Number(
                        value=preset.upscale.get("strength", UpscaleSettings.strength),
                        label="Tiled VCD strength (0: Lanczos + sharpening only)",
                        elem_id="tile-strength",
                    )
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    again_button = gr.Button("Render again with seed + 1", elem_id="again")
                seed_line = gr.Markdown(elem_id="seed-line")
                video = gr.Video(label="Video", elem_id="video", interactive=False, format=None, height=320)
                stages = gr.Image(label="Stages side by side (middle frame)", interactive=False)
                with gr.Row():
                    sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False)
                    metrics = gr.Markdown(elem_id="metrics")
                downloads = gr.File(label="Video and its JSON sidecar", file_count="multiple", interactive=False)
            with gr.Tab("History", id="history"):
                history = gr.Dropdown(allow_custom_value=True, label="Past renders", choices=[], elem_id="history")
                reopen_button = gr.Button("Open", elem_id="reopen")
            with gr.Tab("Models", id="models"):
                current = studio.workspace.model_choice().get("model", {})
                preset_choice = gr.Radio(
                    [*registry.model_preset_names(), jobs.CUSTOM], value=studio.model.key, label="Model"
                )
                base_model = gr.Textbox(
                    label="Base model (hub id, folder or .safetensors)", value=current.get("base_model", "")
                )
                motion = gr.Textbox(
                    label="Motion adapter",
                    value=current.get("motion_adapter", "guoyww/animatediff-motion-adapter-v1-5-2"),
                )
                motion_lora = gr.Textbox(label="Motion LoRA (optional)", value=current.get("motion_lora") or "")
                lora_scale = gr.Number(value=current.get("motion_lora_scale", 0.6), label="Motion LoRA scale")
                device = gr.Dropdown(
                    ["auto", "cuda", "mps", "cpu"], value=current.get("device", "auto"), label="Device"
                )
                dtype = gr.Dropdown(["auto", "fp16", "bf16", "fp32"], value=current.get("dtype", "auto"), label="Dtype")
                use_model = gr.Button("Use this model")

        listed = [identity_table, chosen, insert_choice, history, model_line]
        form = [prompt, negative, frames, height, width, inference_steps, guidance, gamma, seed, scheduler]
        form += [freeu, free_init, free_noise, face_vcd, upscale, tile_strength]
        shown = [video, stages, sheet, metrics, downloads, seed_line, history]
        identity_form = [photos, name, class_word, masks, steps]
        device_job = {"concurrency_id": DEVICE_QUEUE, "concurrency_limit": 1}

        app.load(page_errors(studio.refresh), outputs=listed, api_name="refresh")
        check_button.click(page_errors(studio.check_masks), identity_form, [mask_sheet, train_status], **device_job)
        train_outputs = [mask_sheet, previews, loss_plot, train_status, *listed]
        train_button.click(page_errors(studio.train), identity_form, train_outputs, **device_job)
        cancel_button.click(page_errors(studio.cancel), name, train_status, queue=False)
        import_button.click(
            page_errors(studio.import_identity), [upload, upload_name, upload_class], [identity_status, *listed]
        )
        export_button.click(page_errors(studio.export), [chosen, layout], export_file)
        delete_button.click(page_errors(studio.delete), chosen, [identity_status, *listed])
        insert_button.click(page_errors(studio.insert), [prompt, insert_choice], prompt)
        generate_button.click(page_errors(studio.generate), form, shown, **device_job)
        again_button.click(lambda value: int(value) + 1, seed, seed, api_name=False).then(
            page_errors(studio.generate), form, shown, **device_job
        )
        reopen_button.click(page_errors(studio.reopen), history, [*shown, *form])
        use_model.click(
            page_errors(studio.choose_model),
            [preset_choice, base_model, motion, motion_lora, lora_scale, device, dtype],
            model_line,
        )
    return app


def serve(workspace: Path, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, share: bool = False):
    """Start the studio; blocks until stopped. Only the workspace's files are ever served (call
    `magicme.studio.prepare_environment(workspace)` before importing this module)."""
    workspace_root = Workspace(workspace)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the server polling itself is not news
    credentials = None
    if auth:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise ValueError("--auth takes USER:PASSWORD")
        credentials = (user, password)
    app = build_app(workspace_root)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        auth=credentials,
        share=share,
        allowed_paths=[str(workspace_root.root)],
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=True,
        quiet=False,
    )
