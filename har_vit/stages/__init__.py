"""One module per pipeline stage; each exposes ``run(...)`` over manifests and never imports click."""
