"""The Hydra config tree (a package so Hydra finds it with pkg://rlg.conf once installed)."""
