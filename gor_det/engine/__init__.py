"""gor_det.engine: the only package that imports Ultralytics internals.

* :mod:`.trainer`: ``GorDetectionTrainer`` (QAT + KD + GoR through Ultralytics' public hooks), ``make_trainer_class``.
* :mod:`.teachers`: frozen teachers outside the student's module tree; :mod:`.criterion`: the KD criterion.
* :mod:`.callbacks`, :mod:`.plots`: side effects (threads, criterion install, BN freeze, GoR curves).
* :mod:`.run`: cfg resolution and input checks behind ``tools/train_det.py``; :mod:`.cli`: one-line errors.
* :mod:`.evaluate`, :mod:`.exporting`, :mod:`.ptq`, :mod:`.checkpoint`: evaluation/export/PTQ glue.
"""
