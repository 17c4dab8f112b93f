"""The package's main job (``python -m lowrank_pool.demo``): every head trained on real images, the bilinear
head compressed with and without score matching, the paper's claims judged from paired per-seed differences.

Modules: :mod:`.data` (digits and textures, shipped inside scikit-learn and scikit-image),
:mod:`.experiment` (backbone, training, compression, claims), :mod:`.report` (JSON, markdown, figures).
"""
