"""What the stages share: options, workspace paths, io and manifests, errors, run ids, run loading, inference."""
