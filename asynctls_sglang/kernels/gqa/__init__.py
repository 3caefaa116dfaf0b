"""Sparse decode attention for GQA/MHA layers: each program reads one KV head's tokens once
for all G query heads of its group."""
