"""The benchmark suite's shared parts: the reference shapes, the roofline model and the hand-written forms
(``roofline``), the machine's limits measured in the same run (``machine``), and timing (``timing``).

One copy of each, used by ``run.py`` (every primitive, CPU), ``gpu.py`` (the heads on a CUDA device),
``steady.py`` (back-to-back calls) and ``kernel_ab.py`` (two kernel builds side by side).
"""
