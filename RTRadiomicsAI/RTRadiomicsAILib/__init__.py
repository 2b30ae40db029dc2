"""The Slicer-side package the RTRadiomicsAI modules share (Qt allowed; the ``rtrai`` library never imports it).

- :mod:`.settings`: the hub's application settings (compute device, model folder) and the environment that carries
  them to every module's background jobs.
- :mod:`.template`: Slicer's scripted-module template once: :func:`~.template.describeModule` and
  :class:`~.template.ModuleWidget`, the base of the module widgets (.ui, parameter node, scene close, buttons).
- :mod:`.jobs`: :class:`~.jobs.BackgroundJobPanel`, one ``rtrai`` command at a time in a background process for a
  module panel: QTimer polling, progress, a Cancel that never blocks the GUI thread, and removal of the job's
  temporary patient data when it ends or the scene closes.
- :mod:`.workflow`: the hub's step table from the workflow's structured step events (pure Python).
- :mod:`.results`: the commands' result files (heat maps, CSV tables) into MRML nodes, on any scene.

Nothing is imported here, so that the pure parts (``workflow``, ``results``) import without Qt (pytest, headless).
"""
