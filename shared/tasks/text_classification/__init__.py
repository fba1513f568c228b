"""Single-text classification in the labelled-TSV layout (:mod:`shared.tasks.tsv`): AG News (4 topics).

(SST-2 is a GLUE task, :mod:`shared.tasks.glue`, and reads this layout too.)
"""

from __future__ import annotations

from shared.tasks.base import HubSource, Task
from shared.tasks.tsv import read_tsv_folder

TASKS = (
    Task("agnews", "AG News: news topic, 4 classes (accuracy)", "classification",
         ("World", "Sports", "Business", "Sci/Tech"), False, ("accuracy",), "accuracy",
         HubSource("fancyzhx/ag_news", None, {"train": "train", "test": "test"}, {"text": "text", "label": "label"}),
         read_tsv_folder),
)
