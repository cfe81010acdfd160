"""The admin console (see console.py)."""
