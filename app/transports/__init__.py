"""Brokers behind one small Protocol (base.py), one module per broker."""
