"""Analysis scripts: the paper's figures, generated audio and a listening report from a sweep.

Installed as ``gruv_hpc.analysis``; each module also runs on its own
(``python -m gruv_hpc.analysis.fig1_loss SWEEP_DIR --out DIR``), and ``gruv analyze`` runs them all.
"""
