"""Whisper engines behind one contract (contract.py), chosen by registry.py.

Each engine is a package of its own and is imported only when chosen, so the
gateway, the app builder and the other engine never load it.
"""
