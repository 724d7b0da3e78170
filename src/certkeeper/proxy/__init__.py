"""``certkeeper proxy``: nginx terminates TLS; Python renders, checks, supervises and hot-swaps certificates.

A drop-in for the seed's ``nginx-ssl-proxy`` (same environment, same ``/etc/secrets`` files, same ports).
Python never handles a request: nginx is the data plane.
"""
