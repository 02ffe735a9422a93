"""ComfyUI glue: nodes and ComfyUI model adapters (the backend lives in ecad_core)."""

from .eval_nodes import EvaluateECADSchedule
from .evolve_node import EvolveECADSchedule
from .library import register_user_folder
from .routes import register as register_routes
from .schedule_nodes import ApplyECADSchedule, LoadECADSchedule, PreviewECADSchedule

register_user_folder()
register_routes()

NODE_CLASS_MAPPINGS = {
    "ApplyECADSchedule": ApplyECADSchedule,
    "LoadECADSchedule": LoadECADSchedule,
    "PreviewECADSchedule": PreviewECADSchedule,
    "EvolveECADSchedule": EvolveECADSchedule,
    "EvaluateECADSchedule": EvaluateECADSchedule,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ApplyECADSchedule": "Apply ECAD Cache Schedule",
    "LoadECADSchedule": "Load ECAD Schedule",
    "PreviewECADSchedule": "Preview ECAD Schedule",
    "EvolveECADSchedule": "Evolve ECAD Schedule",
    "EvaluateECADSchedule": "Evaluate ECAD Schedule",
}
