"""The training tasks ``meer-train`` knows: the one list (``task:`` in the config names an entry).

Each entry is a :class:`meer.training.task.Task` subclass; :func:`meer.training.loop.train` drives all
of them with the same loop. To add a task, subclass ``Task`` (or ``meer.training.data.IdentityFolderTask``
for identity-folder data), give it a config section in ``meer.training.config.TrainConfig`` if it needs
one, and add it here.
"""
from __future__ import annotations

from meer.training.meer_task import MEERTask
from meer.training.task import Task
from meer.training.tasks.eum_srt import EUMTask
from meer.training.tasks.maskmtl import MaskMTLTask

#: ``task:`` value -> task class
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (MEERTask, EUMTask, MaskMTLTask)}
