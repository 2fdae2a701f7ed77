"""The training room: slice dataset over prepared volumes, training loop, DDP, checkpoints.

- :mod:`.config`: ``TrainConfig``, presets, ``load_train_config``
- :mod:`.dataset`, :mod:`.normalise`: samples; :mod:`.batches`: per-step randomness
- :mod:`.loop`: ``Trainer`` (two stages, EMA, validation); :mod:`.optimizer` (AdamW, weight decay on weight
  matrices only), :mod:`.lr`, :mod:`.ema`
- :mod:`.distributed`: torchrun / DDP; :mod:`.checkpoint`: safetensors + JSON checkpoints
- :mod:`.run`: ``train_bundle`` (the group level's entry point); :mod:`.history`: training.tsv and the curve
"""
