"""The training subsystem: ``config`` (``TrainConfig``), ``cells`` (the recurrent cells' registry),
``model``, ``trainer`` (the loop), ``checkpoint``, ``schedule`` (the learning rate), ``distributed``
and ``job`` (the submitit entry point that requeues). It stands on ``gruv_hpc.dataset`` and knows
no scheduler.
"""
