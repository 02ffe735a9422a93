"""Harness for end-to-end tests against a real ComfyUI (see server.py, browser.py, make_tiny.py).

Nothing here imports ComfyUI at module level; ComfyUI runs in a child process.
"""
