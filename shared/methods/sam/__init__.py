"""``sam`` (Fu et al., AAAI 2023): the top-k of (sum of the clients' accumulated gradients)², chosen
federatedly before round 1, then values only.

``statistic.py`` (the rule, pure torch), ``phase.py`` (the server's selection phase), ``routes.py``
(the client's side of it), ``tuner.py`` (pending until the mask is installed), ``config.py`` (knobs).
"""

from __future__ import annotations

from shared.methods.base import Method
from shared.methods.sam.config import SamSettings
from shared.methods.sam.phase import select_sam
from shared.methods.sam.routes import ROUTES, restore
from shared.methods.sam.tuner import SamTuner

METHOD = Method(name="sam", help="top-k of (sum of clients' accumulated gradients)², selected before round 1",
                build=SamTuner, settings=SamSettings, select=select_sam, client_routes=ROUTES, restore=restore)
