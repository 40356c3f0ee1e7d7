"""Restoring masked faces in photos with a trained MEER model (``meer-restore``).

    from meer.inference import load_restorer, restore_folder
    restorer, info = load_restorer("checkpoints/meer_112.pt", device="auto")
    result = restorer.restore_image(read_image("photo.jpg"))   # RestoreResult: .rgb, .native, .faces
    restore_folder("photos/", "restored/", restorer)           # the meer-restore folder layout + summary

Modules: ``pipeline`` (``Restorer``), ``region`` (what is pasted back), ``folder`` (folder runs and
output layout), ``summary`` (``summary.csv`` / ``summary.json``), ``weights`` (checkpoint lookup),
``loading`` (checkpoint -> ready ``Restorer``), ``runtime`` (device / precision), ``visuals``.
"""
from meer.inference.folder import FolderRun, restore_folder
from meer.inference.loading import load_restorer
from meer.inference.pipeline import FaceResult, Restorer, RestoreResult
from meer.inference.weights import CheckpointNotFoundError, find_checkpoint

__all__ = ["CheckpointNotFoundError", "FaceResult", "FolderRun", "RestoreResult", "Restorer", "find_checkpoint",
           "load_restorer", "restore_folder"]
