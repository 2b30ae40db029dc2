"""Treatment planning from a dose: photon IMRT fluence plans that mimic a predicted (or given) dose.

- :mod:`rtrai.plan.engine`: the dose-influence matrix of coplanar 6 MV beams (pyRadPlan's pencil-beam engine);
- :mod:`rtrai.plan.mimicking`: the fluence optimisation (dose mimicking with target and OAR priorities) and
  :func:`~rtrai.plan.mimicking.plan_case`, the in-process entry point;
- :mod:`rtrai.plan.outputs`: what ``rtrai plan`` writes (plan dose, plan.json, fluence maps, DVH comparison);
- :mod:`rtrai.plan.commands`: the ``rtrai plan`` command.
"""
