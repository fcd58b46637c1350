"""The inference service: ONNX Runtime engines with micro-batching behind a FastAPI app.

Routers stay thin: they parse the request and call the functions of :mod:`care_companion.serving.predict`,
which are tested without HTTP.
"""
