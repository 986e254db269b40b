"""`python -m sdm.app [weights=...]`: an interactive page (Gradio) that turns a label map into images.

Needs the `app` extra (`pip install 'sdm[app]'`); the rest of sdm never imports it.
"""

import os

# Gradio reports usage over the network unless told not to: cluster nodes are often offline, and a
# research tool should not phone home by default (GRADIO_ANALYTICS_ENABLED=True turns it back on)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
