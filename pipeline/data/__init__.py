"""Data: shards (written by shard.py) and the streams read from them: training batches and the
fixed evaluation pairing. Imports nothing from the other packages.
"""
