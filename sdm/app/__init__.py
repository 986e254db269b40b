"""`python -m sdm.app [weights=...]`: an interactive page (Gradio) that turns a label map into images.

Needs the `app` extra (`pip install 'sdm[app]'`); the rest of sdm never imports it.
"""
