"""ComfyUI glue: nodes and ComfyUI model adapters (the backend lives in ecad_core)."""
from .evolve_node import EvolveECADSchedule
from .library import register_user_folder
from .schedule_nodes import ApplyECADSchedule, LoadECADSchedule, PreviewECADSchedule

register_user_folder()

NODE_CLASS_MAPPINGS = {
    "ApplyECADSchedule": ApplyECADSchedule,
    "LoadECADSchedule": LoadECADSchedule,
    "PreviewECADSchedule": PreviewECADSchedule,
    "EvolveECADSchedule": EvolveECADSchedule,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ApplyECADSchedule": "Apply ECAD Cache Schedule",
    "LoadECADSchedule": "Load ECAD Schedule",
    "PreviewECADSchedule": "Preview ECAD Schedule",
    "EvolveECADSchedule": "Evolve ECAD Schedule",
}
