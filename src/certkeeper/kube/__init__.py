"""``certkeeper run``: the seed's certificate container on Kubernetes (the only place importing lightkube)."""
