"""``dsee`` (Chen et al.): query/value updates (B·A + S)·α/r, S on positions fixed by the base weights.

``tuner.py`` (the update), ``decompose.py`` (the low-rank + sparse decomposition that places S),
``final.py`` + ``prune.py`` (the pruned, inference-efficient final model), ``config.py`` (knobs).
"""

from __future__ import annotations

from shared.methods.base import Method
from shared.methods.dsee.config import DseeSettings
from shared.methods.dsee.tuner import make_dsee_tuner

METHOD = Method(name="dsee", help="query/value (B·A + S)·alpha/r, S placed by the base W; pruned final model",
                build=make_dsee_tuner, settings=DseeSettings, lr=1e-3)
