"""``hiwi`` (Liao et al., ACL 2023): an adapter fed the pre-trained FFN biases, b' = b + f(b), f discarded.

``tuner.py`` (the normalised adapter and why), ``final.py`` (the artifact: new biases only, and the
merged model's speed next to the base's), ``config.py`` (knobs).
"""

from __future__ import annotations

from shared.methods.base import Method
from shared.methods.hiwi.config import HiwiSettings
from shared.methods.hiwi.tuner import make_hiwi_tuner

METHOD = Method(name="hiwi", help="a bottleneck MLP f fed the pre-trained FFN biases: b' = b + f(b)",
                build=make_hiwi_tuner, settings=HiwiSettings, lr=1e-2)
