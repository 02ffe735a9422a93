"""ComfyUI glue: nodes and ComfyUI model adapters (the backend lives in ecad_core)."""

from .apply_node import ApplyECADSchedule
from .evaluate_node import EvaluateECADSchedule
from .evolve_node import EvolveECADSchedule
from .help import annotate
from .library import register_user_folder
from .load_node import LoadECADSchedule
from .preview_node import PreviewECADSchedule
from .routes import register as register_routes

register_user_folder()
register_routes()

NODE_CLASS_MAPPINGS = {
    "ApplyECADSchedule": ApplyECADSchedule,
    "LoadECADSchedule": LoadECADSchedule,
    "PreviewECADSchedule": PreviewECADSchedule,
    "EvolveECADSchedule": EvolveECADSchedule,
    "EvaluateECADSchedule": EvaluateECADSchedule,
}
annotate(NODE_CLASS_MAPPINGS)  # tooltips of every input and output (nodes/help.py)
NODE_DISPLAY_NAME_MAPPINGS = {
    "ApplyECADSchedule": "Apply ECAD Cache Schedule",
    "LoadECADSchedule": "Load ECAD Schedule",
    "PreviewECADSchedule": "Preview ECAD Schedule",
    "EvolveECADSchedule": "Evolve ECAD Schedule",
    "EvaluateECADSchedule": "Evaluate ECAD Schedule",
}
