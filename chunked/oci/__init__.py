"""The OCI side: references, registries (and their mirrors), manifests, layouts on disk,
push and upload."""
