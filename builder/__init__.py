"""Build-time tools for the Docker image (baking the model weights into it)."""

# What `python -m builder.fetch_weights` needs from the project, and all the Dockerfile copies
# in before the weights step: the 15 GB layer is then rebuilt only when these change, not on
# every code change. It must stay free of torch (tests run it from a copy of just these).
BUILD_CONTEXT: tuple[str, ...] = ("builder/", "core/vocabulary.py", "ootd/layout.py", "preprocess/layout.py")
